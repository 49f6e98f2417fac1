"""The estimator's adapter count (`estimate.adapter_parameters`, `catalog.target_layers`)
against the parameters peft really trains, for lists of `training.targetModules` on tiny
T5 and decoder-only models built on CPU by the worker."""

from __future__ import annotations

import pytest
import torch

from orchestrator.core.catalog import ARCHITECTURES
from orchestrator.core.estimate import adapter_parameters, estimate_memory
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import Precision
from orchestrator.core.worker_contract import AttemptSpec
from worker.models import build_model

RANK = 4


def trained(model: str, method: str, targets: str | list[str]) -> tuple[int, set[str]]:
    """(parameters that require grad, names of the modules that got adapters)."""
    trial = AttemptSpec(sweep="s", trial_id="t", lane="l", model=model, method=method,
                        rank=RANK, alpha=2 * RANK,
                        training={"init": "random", "precision": "fp32",
                                  "targetModules": targets})
    net, _, info = build_model(trial, torch.device("cpu"))
    count = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert count == info.trainable_parameters
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1]
               for name, _ in net.named_parameters() if ".lora_A" in name}
    return count, adapted


@pytest.mark.parametrize(("model", "method", "targets", "modules"), [
    ("ladder/t5-tiny-s", "lora", ["q", "v"], {"q", "v"}),
    ("ladder/t5-tiny-s", "lora", ["k", "wi_1", "wo"], {"k", "wi_1", "wo"}),
    ("ladder/qwen-tiny-s", "lora", ["q", "v"], {"q_proj", "v_proj"}),
    ("ladder/qwen-tiny-s", "lora", ["k_proj", "o_proj", "down"], {"k_proj", "o_proj",
                                                                  "down_proj"}),
    ("ladder/llama-tiny-s", "qlora", ["q", "v"], {"q_proj", "v_proj"}),
    ("ladder/llama-tiny-s", "lora", "all-linear", {"q_proj", "k_proj", "v_proj", "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"}),
])
def test_adapter_count_equals_peft(model: str, method: str, targets: str | list[str],
                                   modules: set[str]) -> None:
    count, adapted = trained(model, method, targets)
    assert adapted == modules
    arch = ARCHITECTURES[model]
    assert count == adapter_parameters(arch, RANK, targets)
    estimate = estimate_memory(arch, Method(method), rank=RANK, batch_per_device=1,
                               input_tokens=8, output_tokens=8, precision=Precision.FP32,
                               target_modules=targets)
    assert estimate.trainable_parameters == count
