"""The estimator's activation count against what autograd really saves, on CPU.

Every tensor saved for backward during the worker's DSS forward (both tasks) is collected
with `saved_tensors_hooks` and its storage counted once; parameters are left out. On CPU the
count is exact for fp32 with eager attention, where CPU and CUDA save the same tensors except
that CPU dropout keeps float masks (4 bytes) where CUDA keeps bool ones (1 byte), which is why
the estimate may fall somewhat short here. (bf16 autocast and SDPA differ between CPU and CUDA;
the GPU ladder, tests/bench/gpu_ladder.py, measures those on a GPU.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from orchestrator.core import catalog
from orchestrator.core.catalog import T5Architecture
from orchestrator.core.estimate import estimate_memory
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import Precision
from tests.unit.worker.saved_tensors import saved_activation_bytes

ARCH = T5Architecture(
    d_model=128, d_ff=256, d_kv=32, num_heads=4, num_layers=2, num_decoder_layers=2,
    vocab_size=512,
)
NAME = "ladder/t5-estimate-check"
B, LI, LO = 2, 96, 64


@pytest.fixture
def registered() -> Iterator[None]:
    catalog.ARCHITECTURES[NAME] = ARCH
    yield
    del catalog.ARCHITECTURES[NAME]


def saved_bytes(method: Method, rank: int | None, targets: str | list[str] = "all-linear") -> int:
    def ids(length: int) -> torch.Tensor:
        return torch.randint(1, ARCH.vocab_size, (B, length))

    def batch() -> dict[str, torch.Tensor]:
        mask = torch.ones(B, LI, dtype=torch.long)
        mask[:, -3:] = 0  # some padding, as in real batches
        return {
            "predict_input_ids": ids(LI), "predict_attention_mask": mask, "labels": ids(LO),
            "explain_input_ids": ids(LI), "explain_attention_mask": mask,
            "rationale_labels": ids(LO),
        }

    return saved_activation_bytes(NAME, method, rank, LI, LO, batch, targets)


@pytest.mark.parametrize(("method", "rank", "targets"), [
    (Method.FULL, None, "all-linear"), (Method.LORA, 8, "all-linear"),
    (Method.LORA, 8, ["q", "v"]),  # training.targetModules: self- and cross-attention q, v
])
def test_activation_estimate_matches_saved_tensors(
    registered: None, method: Method, rank: int | None, targets: str | list[str]
) -> None:
    measured = saved_bytes(method, rank, targets)
    e = estimate_memory(ARCH, method, rank=rank, batch_per_device=B, input_tokens=LI,
                        output_tokens=LO, precision=Precision.FP32, attention="eager",
                        target_modules=targets)
    predicted = e.activation_bytes + e.weight_copy_bytes
    assert 0.8 < predicted / measured < 1.1, (predicted, measured)
