"""QLoRA on CPU behaves the same whether or not the CPU has AVX512-BF16.

bitsandbytes decides at `Linear4bit.__init__` (from `has_avx512bf16()`) whether a layer may
switch to its packed CPU kernel outside training mode. These tests force that decision both
ways, so they exercise both kinds of CPU on any CPU: the packing itself is plain torch and
asserts `out_features % 32 == 0` before any AVX512 instruction runs. Ladder's models keep every
NF4 layer on the training path (`worker.models.keep_off_cpu_packed_path`).
"""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import bitsandbytes.nn.modules as bnb_modules
import pytest
import torch

from orchestrator.core.catalog import ARCHITECTURES, BUILTIN_ONLY
from orchestrator.core.worker_contract import AttemptSpec
from worker.models import build_model


@pytest.fixture(params=[True, False], ids=["avx512bf16", "no-avx512bf16"])
def cpu_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: request.param)
    return bool(request.param)


def _qlora(model: str, **training: object) -> AttemptSpec:
    return AttemptSpec(
        sweep="s", trial_id="t", lane="l", model=model, method="qlora", rank=4, alpha=8,
        training={"precision": "fp32", **training},
    )


def _eval_then_train(model: torch.nn.Module, width: int) -> None:
    """An evaluation pass, then a training step whose LoRA weights in the first block learn."""
    inputs = torch.randint(3, width, (2, 12))
    labels = torch.randint(3, width, (2, 6))
    model.eval()
    with torch.no_grad():
        eval_loss = model(input_ids=inputs, labels=labels).loss
    assert torch.isfinite(eval_loss)
    packed = [
        name for name, module in model.named_modules()
        if isinstance(module, bnb.nn.Linear4bit)
        and getattr(module.weight.quant_state, "packing_format_for_cpu", False)
    ]
    assert packed == [], f"layers switched to the packed CPU kernel: {packed[:3]}"
    model.train()
    model.zero_grad()
    model(input_ids=inputs, labels=labels).loss.backward()
    # The first block's LoRA B (A's gradient starts at zero, since B does) only learns if
    # gradient flows back through the frozen NF4 base of every later layer; the packed kernel
    # has no such backward.
    first = next(
        param for name, param in model.named_parameters()
        if "encoder.block.0." in name and "lora_B" in name
    )
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_random_init_qlora_evaluates_and_keeps_training(cpu_kind: bool) -> None:
    model, tokenizer, _ = build_model(_qlora("ladder/t5-tiny-s"), torch.device("cpu"))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    _eval_then_train(model, tokenizer.vocab_size)


def test_pretrained_qlora_with_16_wide_projections(
    tmp_path: Path, cpu_kind: bool
) -> None:
    """The issue's shape: attention projections 16 wide (d_kv=8, 2 heads), loaded through
    transformers' own bitsandbytes path."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
    )
    T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    spec = _qlora(str(tmp_path), init="pretrained", tokenizer="byte")
    model, tokenizer, _ = build_model(spec, torch.device("cpu"))
    _eval_then_train(model, tokenizer.vocab_size)


@pytest.mark.parametrize("name", sorted(BUILTIN_ONLY))
def test_tiny_catalog_models_have_dimensions_both_cpu_paths_accept(name: str) -> None:
    """Every built-in tiny model would also pass bitsandbytes' packing checks (N % 32, even
    K), so a bitsandbytes that ignored Ladder's flag would still evaluate them."""
    arch = ARCHITECTURES[name]
    widths = {width for shape in arch.linear_shapes() for width in shape[:2]}
    assert all(width % 32 == 0 for width in widths), (name, widths)
