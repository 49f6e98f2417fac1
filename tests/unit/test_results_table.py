"""`ladder results` as a table: readable at any terminal width, and nothing made up."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from orchestrator.cli import results_table
from orchestrator.store.records import RESULT_COLUMNS


def record(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(RESULT_COLUMNS)
    base.update(
        sweep="qs", trial_id="aa8d7bff72", lane="qlora-r16-a32-dss0.5-seed0",
        model="google/flan-t5-large", status="succeeded", attempt=1, best_eval_loss=0.4787,
        exact_match=0.25, json_valid_rate=0.875, samples_per_second=13.82,
        peak_host_memory_bytes=int(1.5 * 2**30), wall_seconds=64.4, selection_loss="label",
        bleu=41.25, dsl_similarity=0.625,
    )
    base.update(fields)
    return base


def render(records: list[dict[str, Any]], width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(results_table(records, width))
    return console.export_text().splitlines()


ROWS = [
    record(),
    record(trial_id="b11060026c", model="google/flan-t5-xl", status="oom", oom_kind="budget",
           attempt=2, best_eval_loss=None, exact_match=None, json_valid_rate=None,
           samples_per_second=None, peak_host_memory_bytes=None),
]


@pytest.mark.parametrize("width", [160, 120, 100, 80], ids=lambda w: f"{w}-columns")
def test_fits_the_terminal(width: int) -> None:
    lines = render(ROWS, width)
    assert all(len(line.rstrip()) <= width for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    for shown in ("flan-t5-large", "succeeded", "0.4787", "13.82", "1.5 GiB", "oom/budget #2"):
        assert shown in text, text


def test_wide_terminals_show_everything_as_recorded() -> None:
    text = "\n".join(render(ROWS, 160))
    for shown in ("aa8d7bff72", "qlora-r16-a32-dss0.5-seed0", "25%", "88%", "64.4 s", "41.2",
                  "62%", "samples/s: training loop"):
        assert shown in text, text


def test_narrow_terminals_cut_the_lane_and_drop_the_extras() -> None:
    text = "\n".join(render(ROWS, 80))
    assert "JSON ok" not in text and "exact" not in text
    assert "qlora-r16-a32-dss0.5-seed0" not in text and "…" in text


def test_gpu_memory_replaces_host_memory_when_measured() -> None:
    text = "\n".join(render([record(peak_gpu_memory_bytes=42 * 2**30)], 160))
    assert "peak GPU" in text and "42.0 GiB" in text and "peak host" not in text


def test_the_header_names_the_loss_shown() -> None:
    assert "eval loss: label loss (training.selectionLoss)" in "\n".join(render(ROWS, 160))
    mixed = [*ROWS, record(trial_id="c0ffee0000", selection_loss="dss", best_eval_loss=0.5)]
    text = "\n".join(render(mixed, 160))
    assert "eval loss: per row" in text and "0.4787 label" in text and "0.5000 dss" in text


def test_the_gain_over_the_baseline_is_shown_signed() -> None:
    from orchestrator.store.records import eval_loss_gain

    row = record(baseline_eval_loss=5.0, best_eval_loss=0.4787)
    row["eval_loss_gain"] = eval_loss_gain(row)
    text = "\n".join(render([row, record(trial_id="c0ffee0000")], 160))
    assert "gain" in text and "+4.5213" in text
    assert eval_loss_gain(record(baseline_eval_loss=None)) is None
    assert eval_loss_gain(record(baseline_eval_loss=0.3)) == pytest.approx(0.3 - 0.4787)
