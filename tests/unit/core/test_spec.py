"""The Sweep spec: defaults from the paper, and every invalid input named by its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import (
    PAPER_LADDER,
    Precision,
    SpecError,
    SweepSpec,
    load_sweep_text,
    parse_quantity,
    parse_sweep,
    sweep_manifest,
)
from orchestrator.files import load_sweep

ROOT = Path(__file__).resolve().parents[3]
MINIMAL = {"ladder": ["ladder/t5-tiny-s"]}


def problems_of(document: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_sweep(document)  # type: ignore[arg-type]
    return caught.value.problems


class TestDefaults:
    def test_paper_recipe_is_the_default(self) -> None:
        spec = SweepSpec.model_validate(MINIMAL)
        training = spec.training
        assert (training.epochs, training.learning_rate, training.batch_size) == (100, 5e-5, 8)
        assert (training.lr_plateau.factor, training.lr_plateau.patience) == (0.1, 10)
        assert (training.max_input_tokens, training.max_output_tokens) == (1400, 1024)
        assert training.target_modules == "all-linear"
        assert training.lora_dropout == 0.05
        assert training.precision is Precision.BF16
        assert spec.methods == [Method.FULL, Method.LORA, Method.QLORA]
        assert [(a.rank, a.alphas) for a in spec.adapters] == [
            (32, [32, 64, 128]), (64, [32, 64, 128, 256]), (128, [32, 64, 128, 256, 512])
        ]
        assert spec.axes.dss_alpha == [0.5] and spec.axes.seed == [0]
        assert spec.dataset.eval_fraction == 0.2 and spec.parallelism == 1

    def test_paper_grid_counts(self) -> None:
        spec = SweepSpec.model_validate({"ladder": list(PAPER_LADDER)})
        assert spec.lane_count == 25 and spec.potential_trials == 100


class TestLoading:
    @pytest.mark.parametrize(
        "path",
        ["examples/quickstart.yaml", "k8s/examples/paper-grid.yaml", "k8s/examples/ablation.yaml",
         "k8s/examples/paper-exact.yaml", "examples/paper-exact.yaml"],
        ids=["quickstart", "paper-grid", "ablation", "paper-exact", "paper-exact-local"],
    )
    def test_shipped_examples_are_valid(self, path: str) -> None:
        sweep = load_sweep(ROOT / path)
        assert sweep.name == Path(path).stem

    def test_bare_spec_is_named_after_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "My Sweep_1.yaml"
        path.write_text("ladder: [ladder/t5-tiny-s]\n")
        assert load_sweep(path).name == "my-sweep-1"

    def test_manifest_round_trips(self) -> None:
        sweep = load_sweep(ROOT / "k8s/examples/paper-grid.yaml")
        again = parse_sweep(sweep_manifest(sweep))
        assert again == sweep

    def test_yaml_error_names_line(self) -> None:
        with pytest.raises(SpecError) as caught:
            load_sweep_text("ladder: [a, b\nmethods: [full]\n", source="bad.yaml")
        (where, message), = caught.value.problems
        assert where.startswith("line ") and "not valid YAML" in message
        assert "bad.yaml" in str(caught.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(SpecError, match="cannot read"):
            load_sweep(tmp_path / "nope.yaml")

    @pytest.mark.parametrize(
        ("text", "value"),
        [("24Gi", 24 * 2**30), ("512Mi", 512 * 2**20), ("2G", 2 * 10**9), ("1.5Gi", 3 * 2**29),
         ("1048576", 2**20)],
        ids=["Gi", "Mi", "G", "fractional", "bytes"],
    )
    def test_quantities(self, text: str, value: int) -> None:
        assert parse_quantity(text) == value


# A corpus of invalid specs: (document, the field path named, a fragment of the message).
INVALID = {
    "empty-ladder": ({"ladder": []}, "ladder", "at least 1 item"),
    "duplicate-models": ({"ladder": ["a", "a"]}, "ladder", "appears twice"),
    "blank-model": ({"ladder": [""]}, "ladder[0]", "at least 1 character"),
    "unknown-method": ({**MINIMAL, "methods": ["lorax"]}, "methods[0]", "'full', 'lora'"),
    "no-methods": ({**MINIMAL, "methods": []}, "methods", "at least 1 item"),
    "repeated-method": ({**MINIMAL, "methods": ["lora", "lora"]}, "methods", "not repeat"),
    "rank-zero": ({**MINIMAL, "adapters": [{"rank": 0, "alphas": [8]}]},
                  "adapters[0].rank", "greater than 0"),
    "rank-negative": ({**MINIMAL, "adapters": [{"rank": -4, "alphas": [8]}]},
                      "adapters[0].rank", "greater than 0"),
    "alphas-empty": ({**MINIMAL, "adapters": [{"rank": 8, "alphas": []}]},
                     "adapters[0].alphas", "at least 1 item"),
    "alpha-zero": ({**MINIMAL, "adapters": [{"rank": 8, "alphas": [0]}]},
                   "adapters[0].alphas[0]", "greater than 0"),
    "alphas-repeat": ({**MINIMAL, "adapters": [{"rank": 8, "alphas": [8, 8]}]},
                      "adapters[0].alphas", "not repeat"),
    "rank-repeat": ({**MINIMAL, "adapters": [{"rank": 8, "alphas": [8]},
                                             {"rank": 8, "alphas": [16]}]},
                    "adapters", "once"),
    "adapters-missing-for-lora": ({**MINIMAL, "methods": ["lora"], "adapters": []},
                                  "adapters", "at least one"),
    "eval-fraction-one": ({**MINIMAL, "dataset": {"evalFraction": 1.0}},
                          "dataset.evalFraction", "less than 1"),
    "eval-fraction-zero": ({**MINIMAL, "dataset": {"evalFraction": 0}},
                           "dataset.evalFraction", "greater than 0"),
    "unknown-top-field": ({**MINIMAL, "bogus": 1}, "bogus", "unknown field"),
    "unknown-training-field": ({**MINIMAL, "training": {"lr": 1}}, "training.lr",
                               "unknown field"),
    "snake-case-field": ({**MINIMAL, "training": {"learning_rate": 1}},
                         "training.learning_rate", "unknown field"),
    "wrong-type-epochs": ({**MINIMAL, "training": {"epochs": "many"}}, "training.epochs",
                          "valid integer"),
    "zero-epochs": ({**MINIMAL, "training": {"epochs": 0}}, "training.epochs",
                    "greater than or equal to 1"),
    "fp16": ({**MINIMAL, "training": {"precision": "fp16"}}, "training.precision",
             "fp16 is not supported"),
    "negative-lr": ({**MINIMAL, "training": {"learningRate": -1}}, "training.learningRate",
                    "greater than 0"),
    "dropout-one": ({**MINIMAL, "training": {"loraDropout": 1}}, "training.loraDropout",
                    "less than 1"),
    "dss-alpha-above-one": ({**MINIMAL, "axes": {"dssAlpha": [1.5]}}, "axes.dssAlpha[0]",
                            "less than or equal to 1"),
    "axis-empty": ({**MINIMAL, "axes": {"seed": []}}, "axes.seed", "at least 1 item"),
    "axis-repeats": ({**MINIMAL, "axes": {"seed": [0, 0]}}, "axes.seed", "repeats"),
    "unknown-axis": ({**MINIMAL, "axes": {"temperature": [1]}}, "axes.temperature",
                     "unknown field"),
    "zero-workers": ({**MINIMAL, "resources": {"workers": 0}}, "resources.workers",
                     "greater than or equal to 1"),
    "negative-gpus": ({**MINIMAL, "resources": {"gpusPerWorker": -1}},
                      "resources.gpusPerWorker", "greater than or equal to 0"),
    "override-unknown-model": ({**MINIMAL, "resources": {"overrides": {"x": {"workers": 1}}}},
                               "resources.overrides", "not in the ladder"),
    "bad-budget": ({**MINIMAL, "escalation": {"memoryBudget": "lots"}},
                   "escalation.memoryBudget", "memory quantity"),
    "negative-retries": ({**MINIMAL, "escalation": {"retries": -1}}, "escalation.retries",
                         "greater than or equal to 0"),
    "unknown-on-oom": ({**MINIMAL, "escalation": {"onOOM": "panic"}}, "escalation.onOOM",
                       "'stop-lane'"),
    "zero-parallelism": ({**MINIMAL, "parallelism": 0}, "parallelism",
                         "greater than or equal to 1"),
    "grid-too-large": ({"ladder": [f"m{i}" for i in range(20)], "axes": {"seed": list(range(10))},
                        "maxTrials": 100}, "maxTrials", "more than maxTrials=100"),
    "ladder-not-a-list": ({"ladder": "google/flan-t5-small"}, "ladder", "valid array"),
    "spec-not-a-mapping": (["ladder"], "spec", "expected a mapping"),
    "manifest-wrong-kind": ({"apiVersion": "ladder.dev/v1alpha1", "kind": "Job",
                             "metadata": {"name": "x"}, "spec": MINIMAL}, "kind", "'Sweep'"),
    "manifest-wrong-version": ({"apiVersion": "ladder.dev/v1", "kind": "Sweep",
                                "metadata": {"name": "x"}, "spec": MINIMAL}, "apiVersion",
                               "v1alpha1"),
    "manifest-no-name": ({"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
                          "metadata": {}, "spec": MINIMAL}, "metadata.name", "needs a name"),
    "manifest-name-uppercase": ({"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
                                 "metadata": {"name": "Paper_Grid"}, "spec": MINIMAL},
                                "metadata.name", "DNS label"),
    "manifest-name-too-long": ({"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
                                "metadata": {"name": "x" * 41}, "spec": MINIMAL},
                               "metadata.name", "at most 40"),
    "manifest-spec-field-path": ({"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
                                  "metadata": {"name": "x"}, "spec": {"ladder": []}},
                                 "spec.ladder", "at least 1 item"),
}


@pytest.mark.parametrize(("document", "path", "fragment"), list(INVALID.values()),
                         ids=list(INVALID))
def test_invalid_specs_name_the_field(document: object, path: str, fragment: str) -> None:
    problems = problems_of(document)
    assert any(p == path and fragment in m for p, m in problems), problems
