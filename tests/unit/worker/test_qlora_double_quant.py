"""training.qloraDoubleQuant: one setting for both ways to build a QLoRA model and the estimate.

Before it, the pretrained path (BitsAndBytesConfig) left double quantization off while the
random-init path (bitsandbytes' Params4bit default) and the memory estimate had it on.
"""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from orchestrator.core.catalog import ARCHITECTURES
from orchestrator.core.estimate import estimate_memory, estimate_trial, nf4_bytes_per_weight
from orchestrator.core.grid import expand
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import Precision, Sweep, SweepSpec, Training
from orchestrator.core.worker_contract import AttemptSpec
from worker.models import build_model, random_t5


def _nested(model: torch.nn.Module) -> set[bool]:
    """Whether each NF4 layer's absmax constants are quantized again (bnb's `nested`)."""
    return {bool(m.weight.quant_state.nested) for m in model.modules()
            if isinstance(m, bnb.nn.Linear4bit)}


def test_default_is_on() -> None:
    assert Training().qlora_double_quant is True
    assert Training.model_validate({"qloraDoubleQuant": False}).qlora_double_quant is False


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("init", ["random", "pretrained"])
def test_both_paths_follow_the_setting(tmp_path: Path, init: str, double_quant: bool) -> None:
    model_id = "ladder/t5-tiny-s"
    if init == "pretrained":
        random_t5(ARCHITECTURES[model_id]).save_pretrained(tmp_path)
        model_id = str(tmp_path)
    spec = AttemptSpec(
        sweep="s", trial_id="t", lane="l", model=model_id, method="qlora", rank=4, alpha=8,
        training={"init": init, "precision": "fp32", "tokenizer": "byte",
                  "qloraDoubleQuant": double_quant},
    )
    model, _, _ = build_model(spec, torch.device("cpu"))
    assert _nested(model) == {double_quant}


def test_estimate_follows_the_setting() -> None:
    arch = ARCHITECTURES["google/flan-t5-xl"]
    kwargs = {"rank": 64, "batch_per_device": 1, "input_tokens": 1400, "output_tokens": 1024,
              "precision": Precision.BF16}
    on = estimate_memory(arch, Method.QLORA, **kwargs)
    off = estimate_memory(arch, Method.QLORA, double_quant=False, **kwargs)
    quantized = on.quantized_weights_bytes / nf4_bytes_per_weight()
    assert off.quantized_weights_bytes - on.quantized_weights_bytes == pytest.approx(
        quantized * (nf4_bytes_per_weight(double_quant=False) - nf4_bytes_per_weight()), rel=1e-6)
    assert off.total_bytes > on.total_bytes
    # Full fine-tuning quantizes nothing: the setting changes nothing there.
    assert estimate_memory(arch, Method.FULL, **{**kwargs, "rank": None}) == estimate_memory(
        arch, Method.FULL, double_quant=False, **{**kwargs, "rank": None})


@pytest.mark.parametrize("double_quant", [True, False])
def test_the_sweeps_estimate_reads_the_sweeps_setting(double_quant: bool) -> None:
    spec = SweepSpec(ladder=["google/flan-t5-xl"], methods=["qlora"],
                     adapters=[{"rank": 64, "alphas": [128]}],
                     training={"qloraDoubleQuant": double_quant})
    (trial,) = expand(Sweep(name="s", spec=spec)).all_trials()
    training = spec.training
    expected = estimate_memory(
        ARCHITECTURES["google/flan-t5-xl"], Method.QLORA, rank=64,
        batch_per_device=training.pass_batch(trial.resources.workers),
        input_tokens=training.max_input_tokens, output_tokens=training.max_output_tokens,
        precision=training.precision, data_parallel=trial.resources.workers > 1,
        double_quant=double_quant)
    assert estimate_trial(spec, trial) == expected
