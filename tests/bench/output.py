"""What every benchmark script does with its result: print the report, and write the JSON
when --json names a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(text: str, result: dict[str, Any], json_path: Path | None) -> None:
    print(text)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
