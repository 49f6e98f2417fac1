"""`training.targetModules` in the memory and FLOPs estimates (pure): adapters, their
gradients, optimizer states and activations count only the layers it selects, for T5 and
decoder-only models alike; the catalogue and a sweep's trials are estimated with it."""

from __future__ import annotations

import pytest

from orchestrator.core.catalog import ARCHITECTURES
from orchestrator.core.estimate import (
    adapter_parameters,
    catalog_estimates,
    estimate_memory,
    estimate_trial,
    flops_per_sample,
)
from orchestrator.core.grid import expand
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import Precision, Sweep, SweepSpec, Training

MODELS = ["google/flan-t5-base", "ladder/t5-tiny-s", "Qwen/Qwen2.5-1.5B", "ladder/qwen-tiny-m"]


def est(model: str, method: Method, targets: str | list[str], **kw: object):
    args = {"rank": 16, "batch_per_device": 2, "input_tokens": 256, "output_tokens": 128,
            "precision": Precision.BF16, "target_modules": targets, **kw}
    return estimate_memory(ARCHITECTURES[model], method, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", [Method.LORA, Method.QLORA])
def test_fewer_targets_estimate_less(model: str, method: Method) -> None:
    arch = ARCHITECTURES[model]
    every, qv = est(model, method, "all-linear"), est(model, method, ["q", "v"])
    assert every == est(model, method, list(dict.fromkeys(x.name for x in arch.linear_layers())))
    assert qv.total_bytes < every.total_bytes
    assert qv.trainable_parameters == adapter_parameters(arch, 16, ["q", "v"])
    assert qv.trainable_parameters < every.trainable_parameters
    for field in ("adapter_bytes", "gradient_bytes", "optimizer_bytes"):
        assert getattr(qv, field) * every.trainable_parameters == getattr(
            every, field) * qv.trainable_parameters, field
    assert qv.activation_bytes < every.activation_bytes  # fewer adapters save fewer inputs
    # what does not depend on the adapters stays: the (quantized) base, the weight copies
    assert (qv.weights_bytes, qv.quantized_weights_bytes, qv.weight_copy_bytes) == (
        every.weights_bytes, every.quantized_weights_bytes, every.weight_copy_bytes)
    # checkpointed: one block's adapters at a time, still fewer
    assert est(model, method, ["q", "v"], gradient_checkpointing=True).total_bytes < est(
        model, method, "all-linear", gradient_checkpointing=True).total_bytes


def test_full_fine_tuning_ignores_targets_and_adapters_add_up() -> None:
    for model in MODELS:
        assert est(model, Method.FULL, ["q"], rank=None) == est(
            model, Method.FULL, "all-linear", rank=None)
        arch = ARCHITECTURES[model]
        names = [layer.name for layer in arch.linear_layers()]
        assert sum(adapter_parameters(arch, 8, [n]) for n in names) == adapter_parameters(
            arch, 8)


def test_t5_cross_attention_counts_its_own_tokens() -> None:
    # q and o of cross-attention read decoder tokens, k and v read the encoder's: with long
    # inputs, k-only adapters save more than q-only ones (same widths in T5)
    long_in = {"input_tokens": 1024, "output_tokens": 16}
    k = est("google/flan-t5-base", Method.LORA, ["k"], **long_in)
    q = est("google/flan-t5-base", Method.LORA, ["q"], **long_in)
    assert k.trainable_parameters == q.trainable_parameters
    assert k.decoder_activation_bytes > q.decoder_activation_bytes
    assert k.encoder_activation_bytes == q.encoder_activation_bytes


@pytest.mark.parametrize("model", MODELS)
def test_flops_count_the_targeted_adapters(model: str) -> None:
    arch = ARCHITECTURES[model]
    every = flops_per_sample(arch, Method.LORA, 256, 128, rank=64)
    qv = flops_per_sample(arch, Method.LORA, 256, 128, rank=64, target_modules=["q", "v"])
    frozen = flops_per_sample(arch, Method.LORA, 256, 128, rank=0)
    assert frozen < qv < every
    assert flops_per_sample(arch, Method.LORA, 256, 128, rank=64,
                            target_modules="all-linear") == every


def test_unknown_targets_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"training\.targetModules: gate is not a Linear layer"):
        est("google/flan-t5-base", Method.LORA, ["gate"])
    with pytest.raises(ValueError, match=r"training\.targetModules: wi_0 is not"):
        adapter_parameters(ARCHITECTURES["ladder/qwen-tiny-s"], 4, ["wi_0"])


def test_a_sweeps_trials_and_the_catalogue_use_its_targets() -> None:
    def spec(targets: str | list[str]) -> SweepSpec:
        return SweepSpec.model_validate({
            "ladder": ["ladder/t5-tiny-s", "ladder/qwen-tiny-s"], "methods": ["lora"],
            "adapters": [{"rank": 8, "alphas": [16]}],
            "training": {"targetModules": targets},
        })

    def trials(s: SweepSpec):
        return expand(Sweep(name="s", spec=s)).all_trials()

    every, qv = spec("all-linear"), spec(["q", "v"])
    for a, b in zip(trials(every), trials(qv), strict=True):
        on_all, on_qv = estimate_trial(every, a), estimate_trial(qv, b)
        assert on_all is not None and on_qv is not None
        assert on_qv.trainable_parameters == adapter_parameters(
            ARCHITECTURES[b.model], 8, ["q", "v"])
        assert on_qv.total_bytes < on_all.total_bytes
    # the catalogue: `gate` names no T5 layer, so T5 entries carry no adapter estimates
    entries = {e.name: e for e in catalog_estimates(
        Training(target_modules=["gate", "up"]), workers=1, rank=8, dss_two_tasks=True)}
    assert set(entries["google/flan-t5-base"].estimates) == {Method.FULL}
    qwen = entries["Qwen/Qwen2.5-0.5B"].estimates
    assert set(qwen) == set(Method)
    assert qwen[Method.LORA].trainable_parameters == adapter_parameters(
        ARCHITECTURES["Qwen/Qwen2.5-0.5B"], 8, ["gate", "up"])
