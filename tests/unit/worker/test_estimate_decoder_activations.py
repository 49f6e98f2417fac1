"""The decoder-only activation estimate against what autograd really saves, on CPU.

As tests/unit/worker/test_estimate_activations.py does for T5: every tensor saved for backward
during the worker's DSS forward (both tasks, prompt and completion as one sequence) is
collected with `saved_tensors_hooks` and its storage counted once, parameters left out. fp32
with eager attention, where CPU and CUDA save the same tensors (CPU dropout masks are float,
not bool, which is why the LoRA estimate may fall somewhat short here).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from orchestrator.core import catalog
from orchestrator.core.catalog import DecoderArchitecture
from orchestrator.core.estimate import estimate_memory
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import Precision
from tests.unit.worker.saved_tensors import saved_activation_bytes
from worker.data.batching import IGNORE_INDEX

ARCHS = {
    "qwen2": DecoderArchitecture(family="qwen2", hidden_size=128, intermediate_size=256,
                                 num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=512,
                                 tie_word_embeddings=True),
    "llama": DecoderArchitecture(family="llama", hidden_size=128, intermediate_size=352,
                                 num_layers=2, num_heads=8, num_kv_heads=2, vocab_size=640,
                                 tie_word_embeddings=False),
}
B, LI, LO = 2, 96, 64


@pytest.fixture
def registered() -> Iterator[None]:
    for family, arch in ARCHS.items():
        catalog.ARCHITECTURES[f"ladder/{family}-estimate-check"] = arch
    yield
    for family in ARCHS:
        del catalog.ARCHITECTURES[f"ladder/{family}-estimate-check"]


def saved_bytes(family: str, method: Method, rank: int | None,
                targets: str | list[str] = "all-linear") -> int:
    arch = ARCHS[family]

    def batch() -> dict[str, torch.Tensor]:
        ids = torch.randint(3, arch.vocab_size, (B, LI + LO))
        mask = torch.ones(B, LI + LO, dtype=torch.long)
        mask[1, -3:] = 0  # some padding, as in real batches
        labels = ids.clone()
        labels[:, :LI] = IGNORE_INDEX  # the prompt
        return {
            "predict_input_ids": ids, "predict_attention_mask": mask, "labels": labels,
            "explain_input_ids": ids, "explain_attention_mask": mask, "rationale_labels": labels,
        }

    return saved_activation_bytes(f"ladder/{family}-estimate-check", method, rank, LI, LO, batch,
                                  targets)


@pytest.mark.parametrize(("family", "method", "rank", "targets"), [
    ("qwen2", Method.FULL, None, "all-linear"), ("llama", Method.FULL, None, "all-linear"),
    ("qwen2", Method.LORA, 8, "all-linear"), ("llama", Method.QLORA, 8, "all-linear"),
    ("qwen2", Method.LORA, 8, ["q", "v"]),  # training.targetModules: adapters on two layers
])
def test_decoder_activation_estimate_matches_saved_tensors(
    registered: None, family: str, method: Method, rank: int | None,
    targets: str | list[str],
) -> None:
    measured = saved_bytes(family, method, rank, targets)
    e = estimate_memory(ARCHS[family], method, rank=rank, batch_per_device=B, input_tokens=LI,
                        output_tokens=LO, precision=Precision.FP32, attention="eager",
                        target_modules=targets)
    predicted = e.activation_bytes + e.weight_copy_bytes
    assert 0.8 < predicted / measured < 1.1, (predicted, measured)
