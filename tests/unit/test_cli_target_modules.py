"""`training.targetModules` is checked against the ladder's catalogued models when the spec is
parsed: `ladder validate` refuses a name that is no Linear layer of a model's family (or of
the model: T5's `wi` where its FFN is gated) in one line that names the field, the name, the
model and the choices. Models outside the catalogue are left to the worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.core.spec import SpecError, parse_sweep

FIELD = "training.targetModules"


def manifest(targets: Any, ladder: list[str], methods: list[str] | None = None) -> dict:
    return {
        "apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep", "metadata": {"name": "t"},
        "spec": {"ladder": ladder, "methods": methods or ["lora"],
                 "adapters": [{"rank": 8, "alphas": [16]}],
                 "training": {"targetModules": targets}},
    }


def problems(document: dict) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_sweep(document)
    return caught.value.problems


def validate(tmp_path: Path, document: dict) -> tuple[int, list[str]]:
    """Exit code and output lines of `ladder validate` on `document` (wide terminal, so a
    line is a line)."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "100000"})
    return result.exit_code, result.output.splitlines()


def test_a_layer_of_another_family_is_refused_naming_field_name_model_and_choices(
    tmp_path: Path,
) -> None:
    document = manifest(["q", "wo"], ["ladder/t5-tiny-s", "Qwen/Qwen2.5-0.5B"])
    assert problems(document) == [(f"spec.{FIELD}", (
        "wo is not a Linear layer of the qwen2 model Qwen/Qwen2.5-0.5B (choose from "
        "all-linear, q, k, v, o, gate, up, down, q_proj, k_proj, v_proj, o_proj, gate_proj, "
        "up_proj, down_proj)"))]
    code, lines = validate(tmp_path, document)
    assert code == 1
    assert len(lines) == 2 and "invalid Sweep" in lines[0]
    assert lines[1].strip().startswith(f"spec.{FIELD}: wo is not a Linear layer")
    assert "Qwen/Qwen2.5-0.5B" in lines[1] and "gate_proj" in lines[1]
    assert "Traceback" not in "\n".join(lines)


def test_t5_refuses_decoder_names_and_wi_where_the_ffn_is_gated(tmp_path: Path) -> None:
    [(where, message)] = problems(manifest(["gate", "up"], ["google/flan-t5-small"]))
    assert (where, message.split(" (")[0]) == (
        f"spec.{FIELD}", "gate, up are not Linear layers of the t5 model google/flan-t5-small")
    [(_, message)] = problems(manifest("wi", ["ladder/t5-tiny-m"], ["full", "qlora"]))
    assert message == ("wi is not a Linear layer of the t5 model ladder/t5-tiny-m (choose "
                       "from all-linear, q, k, v, o, wi_0, wi_1, wo)")
    # a bare spec (no manifest) names the field without the `spec.` prefix
    code, lines = validate(tmp_path, manifest("gate", ["ladder/t5-tiny-s"])["spec"])
    assert code == 1 and lines[1].strip().startswith(f"{FIELD}: gate is not")


@pytest.mark.parametrize(("targets", "ladder", "methods"), [
    ("all-linear", ["ladder/t5-tiny-s", "ladder/qwen-tiny-s"], None),
    (["q", "v"], ["google/flan-t5-base", "meta-llama/Llama-3.2-1B"], None),
    (["q_proj", "gate", "down_proj"], ["Qwen/Qwen2.5-7B-Instruct", "/models/SmolLM2-135M"],
     None),
    (["wi_0", "wo"], ["ladder/t5-tiny-l"], ["qlora"]),
    (["gate"], ["ladder/t5-tiny-s"], ["full"]),  # no adapters: targetModules unused
    (["wo"], ["my-org/some-model", "/models/custom"], None),  # not catalogued: the worker's
])
def test_valid_targets_pass(tmp_path: Path, targets: Any, ladder: list[str],
                            methods: list[str] | None) -> None:
    document = manifest(targets, ladder, methods)
    assert parse_sweep(document).spec.training.target_modules == targets
    code, lines = validate(tmp_path, document)
    assert code == 0, lines


@pytest.mark.parametrize(("targets", "expected"), [
    ("", "at least one module"),
    ([], "at least one module"),
    (["q", 5], "string"),
    ([["q"]], "string"),
    ({"q": 1}, "a layer name or a list of names, not a mapping"),
    (5, "not a number"),
    (None, "not null"),
    ([f"layer{i}" for i in range(10_000)], "at most"),
    (["q"] * 33, "at most"),
    (["", "q"], "at least 1 character"),
    ([" q", "v\nx", "w" * 256], "are not Linear layers"),
    ("x" * 10_000, "at most"),
])
def test_hostile_targets_give_one_line_and_no_traceback(
    tmp_path: Path, targets: Any, expected: str
) -> None:
    document = manifest(targets, ["Qwen/Qwen2.5-0.5B"])
    [(where, message)] = problems(document)  # one problem, not one per union member
    assert where == f"spec.{FIELD}"
    assert expected in message
    code, lines = validate(tmp_path, document)
    assert code == 1
    assert "Traceback" not in "\n".join(lines)
    assert len(lines) == 2, lines
    assert all(len(line) < 1000 for line in lines), [len(line) for line in lines]


def test_models_estimate_at_the_files_targets(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(manifest(["gate", "up"], ["Qwen/Qwen2.5-0.5B"])))
    result = CliRunner().invoke(app, ["models", str(path), "--json"])
    assert result.exit_code == 0, result.output
    models = {m["name"]: m["memoryBytes"] for m in json.loads(result.stdout)["models"]}
    assert set(models["google/flan-t5-base"]) == {"full"}  # `gate` is no T5 layer
    everything = json.loads(CliRunner().invoke(app, ["models", "--json"]).stdout)["models"]
    default = {m["name"]: m["memoryBytes"] for m in everything}
    assert models["Qwen/Qwen2.5-0.5B"]["lora"] < default["Qwen/Qwen2.5-0.5B"]["lora"]
    table = CliRunner().invoke(app, ["models", str(path)], env={"COLUMNS": "200"}).output
    [t5] = [line for line in table.splitlines() if "google/flan-t5-base" in line]
    assert [cell.strip() for cell in t5.split("│")][-2:] == ["-", "-"]
