"""The memory estimator and FLOPs model (orchestrator.core.estimate): monotone where physics says
so, ordered by method, and in line with what the paper could and could not fit on 80 GB."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.catalog import ARCHITECTURES
from orchestrator.core.estimate import (
    CUDA_OVERHEAD_BYTES,
    MemoryEstimate,
    adapter_parameters,
    estimate_memory,
    estimate_trial,
    flops_per_sample,
    forward_flops,
    nf4_bytes_per_weight,
    predicted_oom_fn,
    predicts_oom,
)
from orchestrator.core.grid import expand
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import PAPER_LADDER, Precision, Sweep, SweepSpec, load_sweep

GiB = 2**30
GB80 = 80 * GiB
SMALL, BASE, LARGE, XL = PAPER_LADDER
PAPER_IN, PAPER_OUT = 1400, 1024

methods = st.sampled_from(list(Method))
models = st.sampled_from(list(ARCHITECTURES))
settings_ = st.fixed_dictionaries(
    {
        "precision": st.sampled_from(list(Precision)),
        "dss_two_tasks": st.booleans(),
        "gradient_checkpointing": st.booleans(),
        "attention": st.sampled_from(["sdpa", "eager"]),
        "data_parallel": st.booleans(),
    }
)
ranks = st.sampled_from([8, 16, 32, 64, 128, 256])
batches = st.integers(1, 32)
tokens = st.integers(8, 2048)

PAPER_GRID = Path(__file__).resolve().parents[3] / "k8s/examples/paper-grid.yaml"


def estimate(
    model: str, method: Method, *, rank: int = 64, batch: int = 1, li: int = PAPER_IN,
    lo: int = PAPER_OUT, **kwargs: object,
) -> MemoryEstimate:
    return estimate_memory(
        ARCHITECTURES[model], method, rank=rank if method.uses_adapters else None,
        batch_per_device=batch, input_tokens=li, output_tokens=lo,
        **{"precision": Precision.BF16, **kwargs},  # type: ignore[arg-type]
    )


@settings(max_examples=200, deadline=None)
@given(models, methods, ranks, batches, tokens, tokens, settings_, st.integers(1, 8))
def test_monotone_in_batch_and_sequence_lengths(
    model: str, method: Method, rank: int, batch: int, li: int, lo: int,
    kwargs: dict[str, object], more: int,
) -> None:
    base = estimate(model, method, rank=rank, batch=batch, li=li, lo=lo, **kwargs)
    for bigger in (
        estimate(model, method, rank=rank, batch=batch + more, li=li, lo=lo, **kwargs),
        estimate(model, method, rank=rank, batch=batch, li=li + more, lo=lo, **kwargs),
        estimate(model, method, rank=rank, batch=batch, li=li, lo=lo + more, **kwargs),
    ):
        # Strictly more activations; the peak may instead be the gradients after backward
        # (full fine-tuning of short sequences), which do not grow.
        assert bigger.activation_bytes > base.activation_bytes
        assert bigger.total_bytes >= base.total_bytes


@settings(max_examples=100, deadline=None)
@given(models, st.sampled_from([Method.LORA, Method.QLORA]), ranks, batches, tokens, tokens,
       settings_)
def test_monotone_in_rank(
    model: str, method: Method, rank: int, batch: int, li: int, lo: int,
    kwargs: dict[str, object],
) -> None:
    small = estimate(model, method, rank=rank, batch=batch, li=li, lo=lo, **kwargs)
    large = estimate(model, method, rank=2 * rank, batch=batch, li=li, lo=lo, **kwargs)
    assert large.total_bytes > small.total_bytes
    assert large.activation_bytes > small.activation_bytes
    assert large.adapter_bytes == 2 * small.adapter_bytes


@settings(max_examples=100, deadline=None)
@given(methods, ranks, batches, tokens, tokens, settings_)
def test_monotone_in_model_size(
    method: Method, rank: int, batch: int, li: int, lo: int, kwargs: dict[str, object]
) -> None:
    totals = [
        estimate(m, method, rank=rank, batch=batch, li=li, lo=lo, **kwargs).total_bytes
        for m in PAPER_LADDER
    ]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)


@settings(max_examples=100, deadline=None)
@given(models, ranks, batches, tokens, tokens, settings_)
def test_parameter_memory_is_ordered_qlora_lora_full(
    model: str, rank: int, batch: int, li: int, lo: int, kwargs: dict[str, object]
) -> None:
    def weights(e: MemoryEstimate) -> int:
        return e.weights_bytes + e.quantized_weights_bytes

    def parameter_state(e: MemoryEstimate) -> int:
        return weights(e) + e.adapter_bytes + e.gradient_bytes + e.optimizer_bytes

    full, lora, qlora = (
        estimate(model, m, rank=rank, batch=batch, li=li, lo=lo, **kwargs)
        for m in (Method.FULL, Method.LORA, Method.QLORA)
    )
    assert weights(qlora) < weights(lora) == weights(full)
    if adapter_parameters(ARCHITECTURES[model], rank) < ARCHITECTURES[model].parameters:
        assert parameter_state(qlora) < parameter_state(lora) < parameter_state(full)


@pytest.mark.parametrize("model", PAPER_LADDER)
@pytest.mark.parametrize("precision", list(Precision))
def test_totals_are_ordered_for_the_paper_models(model: str, precision: Precision) -> None:
    full, lora, qlora = (
        estimate(model, m, precision=precision, data_parallel=True).total_bytes
        for m in (Method.FULL, Method.LORA, Method.QLORA)
    )
    assert qlora < lora < full


def test_breakdown_adds_up() -> None:
    e = estimate(LARGE, Method.LORA, rank=128, batch=2)
    items = e.breakdown()
    assert set(items) >= {
        "weights_bytes", "quantized_weights_bytes", "adapter_bytes", "gradient_bytes",
        "optimizer_bytes", "encoder_activation_bytes", "decoder_activation_bytes",
        "logits_bytes", "overhead_bytes", "total_bytes",
    }
    assert all(v >= 0 for v in items.values())
    persistent = (e.weights_bytes + e.quantized_weights_bytes + e.adapter_bytes
                  + e.optimizer_bytes + e.ddp_bucket_bytes + e.overhead_bytes)
    assert e.total_bytes >= persistent + e.activation_bytes + e.weight_copy_bytes
    assert e.overhead_bytes == CUDA_OVERHEAD_BYTES
    # AdamW: two fp32 states per trainable parameter; fp32 gradients.
    assert e.optimizer_bytes == 8 * e.trainable_parameters
    assert e.gradient_bytes == 4 * e.trainable_parameters
    assert e.trainable_parameters == adapter_parameters(ARCHITECTURES[LARGE], 128)


def test_nf4_costs_half_a_byte_plus_absmax() -> None:
    assert 0.5 < nf4_bytes_per_weight() < 0.52
    assert nf4_bytes_per_weight(double_quant=False) == 0.5 + 4 / 64
    xl = ARCHITECTURES[XL]
    q = estimate(XL, Method.QLORA)
    wo = 48 * xl.d_ff * xl.d_model  # kept fp32, like the embedding, LM head and norms
    assert q.quantized_weights_bytes == pytest.approx((xl.linear_params - wo) * 0.5156, rel=1e-3)
    assert q.weights_bytes == 4 * (xl.parameters - xl.linear_params + wo)


def test_two_tasks_and_checkpointing() -> None:
    two = estimate(BASE, Method.FULL, batch=4)
    one = estimate(BASE, Method.FULL, batch=4, dss_two_tasks=False)
    assert two.encoder_activation_bytes == 2 * one.encoder_activation_bytes
    checkpointed = estimate(BASE, Method.FULL, batch=4, gradient_checkpointing=True)
    assert checkpointed.activation_bytes < two.activation_bytes / 4


def test_eager_attention_costs_more_than_sdpa() -> None:
    sdpa = estimate(LARGE, Method.FULL, attention="sdpa")
    eager = estimate(LARGE, Method.FULL, attention="eager")
    assert eager.encoder_activation_bytes > sdpa.encoder_activation_bytes


def test_rejects_nonsense() -> None:
    arch = ARCHITECTURES[SMALL]
    with pytest.raises(ValueError, match="rank"):
        estimate_memory(arch, Method.LORA, rank=None, batch_per_device=1, input_tokens=8,
                        output_tokens=8, precision=Precision.BF16)
    with pytest.raises(ValueError, match="positive"):
        estimate_memory(arch, Method.FULL, rank=None, batch_per_device=0, input_tokens=8,
                        output_tokens=8, precision=Precision.BF16)


# --- the paper's setup: 8-way DDP (a full replica per GPU), batch 1, 1400/1024 tokens ------


def paper_setup(model: str, method: Method) -> MemoryEstimate:
    """Their scripts: fp32 for full and LoRA, bf16 compute for QLoRA, eager attention
    (transformers of 2024 had no SDPA for T5), both DSS tasks, DDP without sharding."""
    precision = Precision.BF16 if method is Method.QLORA else Precision.FP32
    return estimate(model, method, rank=64, precision=precision, attention="eager",
                    data_parallel=True)


@pytest.mark.parametrize("method", list(Method))
@pytest.mark.parametrize("model", [SMALL, BASE, LARGE])
def test_paper_everything_below_xl_fits_80gb(model: str, method: Method) -> None:
    assert paper_setup(model, method).total_bytes < GB80


def test_paper_xl_only_qlora_fits_80gb() -> None:
    """docs/paper.md, "The escalation procedure": all XL runs were QLoRA; XL full and XL
    LoRA did not fit."""
    assert paper_setup(XL, Method.FULL).total_bytes > GB80
    assert paper_setup(XL, Method.LORA).total_bytes > GB80
    assert paper_setup(XL, Method.QLORA).total_bytes < GB80
    # Clearly over (more than 1.2 x the card): predicted, never launched.
    assert predicts_oom(paper_setup(XL, Method.FULL), GB80)
    assert predicts_oom(paper_setup(XL, Method.LORA), GB80)
    assert not predicts_oom(paper_setup(XL, Method.QLORA), GB80)


def test_predicts_oom_only_when_clearly_over() -> None:
    e = estimate(LARGE, Method.FULL)
    assert not predicts_oom(e, e.total_bytes)
    assert not predicts_oom(e, int(e.total_bytes / 1.19))
    assert predicts_oom(e, int(e.total_bytes / 1.21))
    assert predicts_oom(e, int(e.total_bytes / 1.05), margin=1.0)


# --- the helper for the runner and the controller -------------------------------------------


def test_predicted_oom_fn_needs_device_memory_and_the_switch() -> None:
    spec = SweepSpec(ladder=list(PAPER_LADDER))
    assert predicted_oom_fn(spec) is None  # deviceMemory unknown
    off = SweepSpec(ladder=list(PAPER_LADDER),
                    escalation={"predictOOM": False, "deviceMemory": "80Gi"})
    assert predicted_oom_fn(off) is None


def test_predicted_oom_fn_on_the_paper_grid() -> None:
    sweep = load_sweep(PAPER_GRID)
    predicted = predicted_oom_fn(sweep.spec)
    assert predicted is not None
    grid = expand(sweep)
    flagged = {(t.model, t.lane.method) for t in grid.all_trials() if predicted(t)}
    # bf16 + SDPA on 80 GiB: no trial of the paper's grid is clearly over (XL full is close,
    # and is left to the probe step).
    assert flagged == set()
    # On a 24 GiB card (deviceMemory, or a memoryBudget under it) the large end is flagged.
    small_card = sweep.spec.model_copy(
        update={"escalation": sweep.spec.escalation.model_copy(update={"memory_budget": "24Gi"})}
    )
    predicted = predicted_oom_fn(small_card)
    assert predicted is not None
    flagged = {(t.model, t.lane.method) for t in grid.all_trials() if predicted(t)}
    assert (XL, Method.FULL) in flagged and (XL, Method.QLORA) in flagged
    assert not any(model == SMALL for model, _ in flagged)  # 8 examples on one GPU still fit


def test_estimate_trial_uses_the_trials_share_of_the_batch() -> None:
    spec = SweepSpec(
        ladder=[SMALL, "someone/unknown-model"],
        resources={"workers": 3, "overrides": {SMALL: {"workers": 3}}},
        training={"batchSize": 8, "maxInputTokens": 512, "maxOutputTokens": 128},
        axes={"dssAlpha": [1.0]},
    )
    grid = expand(Sweep(name="s", spec=spec))
    small, unknown = grid.trials[grid.lanes[0].name]
    e = estimate_trial(spec, small)
    assert e is not None
    # 8 over 3 workers: each takes 8 // 3 = 2 per step, as the worker does.
    assert e == estimate_memory(
        ARCHITECTURES[SMALL], Method.FULL, rank=None, batch_per_device=2, input_tokens=512,
        output_tokens=128, precision=Precision.BF16, dss_two_tasks=False, data_parallel=True,
    )
    assert estimate_trial(spec, unknown) is None


# --- FLOPs -----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(models, methods, tokens, tokens, st.integers(1, 64))
def test_flops_monotone_in_lengths(
    model: str, method: Method, li: int, lo: int, more: int
) -> None:
    arch = ARCHITECTURES[model]
    base = flops_per_sample(arch, method, li, lo, rank=16)
    assert flops_per_sample(arch, method, li + more, lo, rank=16) > base
    assert flops_per_sample(arch, method, li, lo + more, rank=16) > base


def test_flops_follow_six_n_tokens_when_attention_is_negligible() -> None:
    arch = ARCHITECTURES[XL]
    li = lo = 16
    f = forward_flops(arch, li, lo)
    assert f.total == pytest.approx(f.encoder + f.decoder + f.lm_head)
    # 2 FLOPs per weight per token, forward; the decoder's cross k, v read the input tokens.
    weights_x_tokens = (
        arch.num_layers * (arch.attention_params + arch.ffn_params) * li
        + arch.num_decoder_layers * (2 * arch.attention_params + arch.ffn_params) * lo
        + arch.lm_head_params * lo
    )
    assert f.total == pytest.approx(2 * weights_x_tokens, rel=0.01)
    full = flops_per_sample(arch, Method.FULL, li, lo, dss_two_tasks=False)
    assert full == pytest.approx(6 * weights_x_tokens, rel=0.01)
    lora = flops_per_sample(arch, Method.LORA, li, lo, rank=64, dss_two_tasks=False)
    assert 4 * weights_x_tokens < lora < 4.4 * weights_x_tokens  # no weight gradients
    assert flops_per_sample(arch, Method.FULL, li, lo) == 2 * full  # both DSS tasks


def test_paper_flops_per_sample() -> None:
    """At 1400/1024 tokens attention is a sizeable share: XL full ~45.6 TFLOP per DSS sample."""
    xl = flops_per_sample(ARCHITECTURES[XL], Method.FULL, PAPER_IN, PAPER_OUT)
    assert 4.4e13 < xl < 4.7e13
    f = forward_flops(ARCHITECTURES[XL], PAPER_IN, PAPER_OUT)
    assert 0.1 < (f.encoder_attention + f.decoder_attention) / f.total < 0.3
