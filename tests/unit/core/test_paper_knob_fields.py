"""The spec fields of the authors' recipe (issue 14): defaults keep Ladder's behaviour, values
are validated, and `qloraOverrides` reaches QLoRA lanes only (and their memory estimate)."""

from __future__ import annotations

import pytest

from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import (
    Attention,
    LossReduction,
    Precision,
    SaveModel,
    SpecError,
    Sweep,
    Training,
    WeightDtype,
    parse_sweep,
)


def sweep(**training: object) -> Sweep:
    return parse_sweep({
        "ladder": ["ladder/t5-tiny-s"], "methods": ["full", "lora", "qlora"],
        "adapters": [{"rank": 4, "alphas": [8]}], "training": training,
    })


def test_defaults_are_todays_behaviour() -> None:
    t = Training()
    assert (t.attention, t.loss_reduction, t.gradient_accumulation_steps,
            t.qlora_weight_dtype, t.qlora_overrides, t.tf32, t.save_model) == (
        Attention.SDPA, LossReduction.TOKEN_MEAN, 1, WeightDtype.FP32, None, True,
        SaveModel.NONE)


@pytest.mark.parametrize(("field", "value"), [
    ("attention", "flash"), ("lossReduction", "sum"), ("gradientAccumulationSteps", 0),
    ("qloraWeightDtype", "int8"), ("saveModel", "sometimes"),
    ("qloraOverrides", {"precision": "fp16"}), ("qloraOverrides", {"epochs": 3}),
    ("qloraOverrides", {"gradientAccumulationSteps": 0}),
])
def test_bad_values_name_their_field(field: str, value: object) -> None:
    with pytest.raises(SpecError) as error:
        sweep(**{field: value})
    assert any(path.startswith(f"training.{field}") for path, _ in error.value.problems), \
        error.value.problems


def test_qlora_overrides_reach_qlora_lanes_only() -> None:
    s = sweep(precision="fp32", tf32=False,
              qloraOverrides={"precision": "bf16", "gradientAccumulationSteps": 4})
    grid = expand(s)
    seen = {}
    for lane in grid.lanes:
        (trial,) = grid.trials[lane.name]
        training = attempt_spec(s, trial, attempt=1, output_dir="/tmp/x").training
        seen[lane.method] = (training.precision, training.gradient_accumulation_steps,
                             training.tf32)
    assert seen == {
        Method.FULL: (Precision.FP32, 1, False), Method.LORA: (Precision.FP32, 1, False),
        Method.QLORA: (Precision.BF16, 4, False),
    }
    # Lane names (and so trial ids) do not depend on the overrides.
    assert [lane.name for lane in grid.lanes] == [lane.name for lane in expand(sweep()).lanes]


def test_the_estimate_follows_the_attention_kernel() -> None:
    """Eager attention keeps the score-sized softmax and dropout tensors: a bigger estimate."""
    from orchestrator.core.estimate import estimate_trial

    peaks = {}
    for attention in ("sdpa", "eager"):
        s = sweep(attention=attention)
        trial = expand(s).all_trials()[0]
        estimate = estimate_trial(s.spec, trial)
        assert estimate is not None
        peaks[attention] = estimate.total_bytes
    assert peaks["eager"] > peaks["sdpa"]
