"""The bytes autograd saves for backward during the worker's DSS forward: what the memory
estimator's activation figure predicts (tests/unit/worker/test_estimate_*activations.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import ModelInit, Precision, Training
from orchestrator.core.worker_contract import AttemptSpec
from worker.models import build_model
from worker.train import dss_forward


def saved_activation_bytes(model_name: str, method: Method, rank: int | None,
                           input_tokens: int, output_tokens: int,
                           make_batch: Callable[[], dict[str, torch.Tensor]],
                           target_modules: str | list[str] = "all-linear") -> int:
    """Build `model_name` (fp32, random init, seed 0, eager attention, LoRA on
    `target_modules`), run one DSS forward on `make_batch()` and return the bytes of every
    distinct non-parameter storage saved for backward."""
    training = Training(precision=Precision.FP32, init=ModelInit.RANDOM,
                        max_input_tokens=input_tokens, max_output_tokens=output_tokens,
                        target_modules=target_modules)
    trial = AttemptSpec(sweep="s", trial_id="t", lane="l", model=model_name, method=method,
                        rank=rank, alpha=rank, training=training)
    torch.manual_seed(0)
    model, _, _ = build_model(trial, torch.device("cpu"))
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = "eager"
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        pointer = storage.data_ptr()
        if pointer and pointer not in params:
            storages[pointer] = max(storages.get(pointer, 0), storage.nbytes())
        return t

    batch = make_batch()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dss_forward(model, batch, 0.5)
    return sum(storages.values())
