"""How figures read in tables: bytes in MiB/GiB, seconds, losses, ratios. Pure.

Shared by `ladder report` and the CLI's tables, so a number reads the same everywhere.
"""

from __future__ import annotations

import math

__all__ = ["fmt_bytes", "fmt_float", "fmt_opt", "fmt_ratio", "fmt_seconds", "fmt_signed"]


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 2**30:
        return f"{value / 2**30:.1f} GiB"
    return f"{value / 2**20:.0f} MiB"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 3600:
        return f"{value:,.0f} s ({value / 3600:.1f} h)"
    return f"{value:.1f} s"


def fmt_float(value: float | None, digits: int = 5) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def fmt_signed(value: float | None, digits: int = 4) -> str:
    """A difference, always signed (+0.1234, -0.0100): a gain over the baseline."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def fmt_opt(value: object) -> str:
    return "-" if value is None else str(value)
