"""`ladder models` lists the catalogue with per-method estimates; `ladder plan` shows which
rungs of a ladder the estimator expects to fit, per method (mixed families included)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.core.catalog import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[2]


def test_models_json_lists_every_architecture() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    models = {m["name"]: m for m in listing["models"]}
    assert set(models) == set(ARCHITECTURES)
    qwen = models["Qwen/Qwen2.5-7B"]
    assert (qwen["family"], qwen["parameters"], qwen["tiedEmbeddings"]) == (
        "qwen2", 7_615_616_512, False)
    memory = qwen["memoryBytes"]
    assert memory["full"] > memory["lora"] > memory["qlora"] > 0
    assert listing["maxInputTokens"] == 1400 and listing["batchPerDevice"] == 1


def test_models_at_a_sweeps_lengths(tmp_path: Path) -> None:
    short = yaml.safe_load((ROOT / "examples" / "quickstart-decoder.yaml").read_text())
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(short))
    listing = json.loads(CliRunner().invoke(app, ["models", str(path), "--json"]).stdout)
    assert listing["maxInputTokens"] == short["spec"]["training"]["maxInputTokens"]
    text = CliRunner().invoke(app, ["models", str(path)], env={"COLUMNS": "80"}).output
    assert "HuggingFaceTB/SmolLM2-1.7B" in text  # never cut, even on a narrow terminal


def test_plan_shows_the_fit_per_method_for_a_mixed_ladder(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "k8s" / "examples" / "qwen-ladder.yaml").read_text())
    result = CliRunner().invoke(app, ["plan", str(ROOT / "k8s/examples/qwen-ladder.yaml")],
                                env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()
            if line.strip().startswith("Qwen/")}
    assert "OOM" in rows["Qwen/Qwen2.5-7B"] and "OOM" not in rows["Qwen/Qwen2.5-0.5B"]
    spec["spec"]["ladder"] = ["ladder/t5-tiny-s", "ladder/qwen-tiny-s", "my/unknown-model"]
    spec["spec"]["resources"] = {"workers": 1, "gpusPerWorker": 0}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(spec))
    output = CliRunner().invoke(app, ["plan", str(path)], env={"COLUMNS": "120"}).output
    lines = {line.split()[0]: line for line in output.splitlines()
             if line.strip().startswith(("ladder/", "my/"))}
    assert "fits" in lines["ladder/t5-tiny-s"] and "fits" in lines["ladder/qwen-tiny-s"]
    assert "?" in lines["my/unknown-model"]
