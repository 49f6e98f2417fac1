"""The memory estimate of decoder-only trials (pure): what changes with the method, tying,
sequence length and checkpointing, and what the paper's cluster fits."""

from __future__ import annotations

from orchestrator.core.catalog import ARCHITECTURES
from orchestrator.core.estimate import (
    GiB,
    adapter_parameters,
    estimate_memory,
    flops_per_sample,
)
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import Precision

H100 = 80 * GiB


def est(model: str, method: Method, **kw: object):
    args = {"rank": None if method is Method.FULL else 16, "batch_per_device": 1,
            "input_tokens": 1024, "output_tokens": 512, "precision": Precision.BF16, **kw}
    return estimate_memory(ARCHITECTURES[model], method, **args)  # type: ignore[arg-type]


def test_methods_order_and_the_7b_ladder_on_an_h100() -> None:
    full, lora, qlora = (est("Qwen/Qwen2.5-7B", m) for m in Method)
    assert full.total_bytes > lora.total_bytes > qlora.total_bytes
    assert full.total_bytes > H100  # 7.6B x 16 bytes of weights, gradients and AdamW
    assert qlora.total_bytes < H100 / 2  # NF4 base; activations of 2 x 1536 tokens dominate
    assert est("Qwen/Qwen2.5-7B", Method.QLORA, gradient_checkpointing=True).total_bytes < (
        24 * GiB)  # a 24 GB card
    assert est("Qwen/Qwen2.5-0.5B", Method.FULL).total_bytes < H100
    # LoRA trains adapters on all seven projections of every block only.
    arch = ARCHITECTURES["Qwen/Qwen2.5-7B"]
    assert lora.trainable_parameters == adapter_parameters(arch, 16)
    assert qlora.quantized_weights_bytes < arch.linear_params * 0.6


def test_tied_heads_count_once_and_logits_cover_the_prompt() -> None:
    tied = est("Qwen/Qwen2.5-3B", Method.FULL)
    arch = ARCHITECTURES["Qwen/Qwen2.5-3B"]
    assert tied.weights_bytes == 4 * arch.parameters  # the head shares the embedding
    longer_prompt = est("Qwen/Qwen2.5-3B", Method.FULL, input_tokens=2048)
    # logits are fp32 over the vocabulary for every position, prompt included
    assert longer_prompt.logits_bytes - tied.logits_bytes >= 2 * 1024 * 4 * arch.vocab_size


def test_checkpointing_and_one_task_save_activation_memory() -> None:
    plain = est("meta-llama/Llama-3.1-8B", Method.LORA)
    checkpointed = est("meta-llama/Llama-3.1-8B", Method.LORA, gradient_checkpointing=True)
    one_task = est("meta-llama/Llama-3.1-8B", Method.LORA, dss_two_tasks=False)
    assert checkpointed.decoder_activation_bytes < plain.decoder_activation_bytes / 4
    assert one_task.decoder_activation_bytes * 2 == plain.decoder_activation_bytes
    assert plain.encoder_activation_bytes == 0


def test_decoder_flops_grow_with_either_length() -> None:
    arch = ARCHITECTURES["meta-llama/Llama-3.2-1B"]
    base = flops_per_sample(arch, Method.FULL, 512, 256)
    assert flops_per_sample(arch, Method.FULL, 1024, 256) > base
    assert flops_per_sample(arch, Method.FULL, 512, 512) > base
    # about 6 x parameters x tokens x 2 tasks, plus attention
    assert 6 * arch.parameters * 768 * 2 < base < 6 * arch.parameters * 768 * 2 * 1.5
    assert flops_per_sample(arch, Method.LORA, 512, 256, rank=16) < base
