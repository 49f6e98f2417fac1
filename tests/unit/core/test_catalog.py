"""The decoder-only catalogue: parameter counts from each public config against the published
totals (tied embeddings counted once), LoRA target names and the block Linears they select."""

from __future__ import annotations

import pytest

from orchestrator.core.catalog import (
    ARCHITECTURES,
    BUILTIN_ONLY,
    DecoderArchitecture,
    T5Architecture,
    architecture,
    lora_targets,
    target_layers,
)

# The totals each model card / safetensors index publishes, to the parameter.
PUBLISHED = {
    "Qwen/Qwen2.5-0.5B": 494_032_768,
    "Qwen/Qwen2.5-1.5B": 1_543_714_304,
    "Qwen/Qwen2.5-3B": 3_085_938_688,
    "Qwen/Qwen2.5-7B": 7_615_616_512,
    "meta-llama/Llama-3.2-1B": 1_235_814_400,
    "meta-llama/Llama-3.2-3B": 3_212_749_824,
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    "HuggingFaceTB/SmolLM2-135M": 134_515_008,
    "HuggingFaceTB/SmolLM2-360M": 361_821_120,
    "HuggingFaceTB/SmolLM2-1.7B": 1_711_376_384,
}
UNTIED = {"Qwen/Qwen2.5-7B", "meta-llama/Llama-3.1-8B"}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_decoder_parameter_counts_match_the_published_totals(name: str) -> None:
    arch = ARCHITECTURES[name]
    assert isinstance(arch, DecoderArchitecture)
    assert arch.parameters == PUBLISHED[name]
    assert arch.tie_word_embeddings is (name not in UNTIED)
    # A tied head adds nothing; an untied one a second vocab x hidden matrix.
    assert arch.lm_head_params == (0 if arch.tie_word_embeddings else arch.embedding_params)


def test_tiny_decoder_ladder_grows_and_has_both_families() -> None:
    sizes = [ARCHITECTURES[f"ladder/qwen-tiny-{s}"].parameters for s in "sml"]
    assert sizes == sorted(sizes) and sizes[2] > 20 * sizes[1]
    assert {ARCHITECTURES[n].family for n in BUILTIN_ONLY} == {"t5", "qwen2", "llama"}


def test_instruct_variants_and_local_paths_resolve_to_their_base() -> None:
    base = ARCHITECTURES["Qwen/Qwen2.5-1.5B"]
    assert architecture("Qwen/Qwen2.5-1.5B-Instruct") is base
    assert architecture("/models/Qwen2.5-1.5B/") is base
    assert architecture("Qwen/Qwen2.5-14B") is None


def test_lora_targets() -> None:
    assert lora_targets("qwen2", "all-linear") == "all-linear"
    assert lora_targets("llama", ["q", "v_proj", "gate", "down"]) == [
        "q_proj", "v_proj", "gate_proj", "down_proj"]
    assert lora_targets("t5", ["q", "v"]) == ["q", "v"]
    with pytest.raises(ValueError, match="targetModules: wi_0 is not a Linear layer of a llama"):
        lora_targets("llama", ["q", "wi_0"])
    with pytest.raises(ValueError, match="q_proj"):
        lora_targets("t5", "q_proj")


def test_linear_layers_by_name() -> None:
    t5 = ARCHITECTURES["google/flan-t5-base"]
    assert [layer.name for layer in t5.linear_layers()] == [
        "q", "k", "v", "o", "wi_0", "wi_1", "wo"]
    q = t5.linear_layers()[0]
    assert (q.d_in, q.d_out, q.count) == (768, 768, 12 + 2 * 12)  # self (both), cross (dec)
    relu = T5Architecture(d_model=8, d_ff=16, d_kv=2, num_heads=4, num_layers=1,
                          num_decoder_layers=1, feed_forward_proj="relu")
    assert [layer.name for layer in relu.linear_layers()][4:] == ["wi", "wo"]
    qwen = ARCHITECTURES["Qwen/Qwen2.5-7B"]
    assert [(layer.name, layer.d_in, layer.d_out) for layer in qwen.linear_layers()] == [
        ("q", 3584, 3584), ("k", 3584, 512), ("v", 3584, 512), ("o", 3584, 3584),
        ("gate", 3584, 18944), ("up", 3584, 18944), ("down", 18944, 3584)]
    for arch in ARCHITECTURES.values():  # linear_shapes, as existing callers read it
        assert arch.linear_shapes() == [layer[1:] for layer in arch.linear_layers()]
        assert sum(i * o * n for i, o, n in arch.linear_shapes()) == arch.linear_params


def test_target_layers_select_by_short_or_long_name() -> None:
    for arch in ARCHITECTURES.values():
        assert target_layers(arch, "all-linear") == arch.linear_layers()
        assert [layer.name for layer in target_layers(arch, ["v", "q"])] == ["q", "v"]
        assert [layer.name for layer in target_layers(arch, "o")] == ["o"]
    qwen = ARCHITECTURES["ladder/qwen-tiny-s"]
    assert target_layers(qwen, ["q_proj", "v_proj"]) == target_layers(qwen, ["q", "v"])
    assert target_layers(qwen, ["gate", "up_proj", "up"]) == qwen.linear_layers()[4:6]


def test_target_layers_refuse_layers_the_model_lacks() -> None:
    t5 = ARCHITECTURES["google/flan-t5-base"]
    # gated-GELU T5 has wi_0 and wi_1; peft would silently skip `wi` next to a matching name
    with pytest.raises(ValueError, match=r"^training.targetModules: wi is not a Linear layer "
                       r"of the t5 model m \(choose from all-linear, q, k, v, o, wi_0, wi_1, "
                       r"wo\)$"):
        target_layers(t5, ["q", "wi"], model="m")
    with pytest.raises(ValueError, match="gate is not a Linear layer of a t5 model"):
        target_layers(t5, "gate")
    with pytest.raises(ValueError, match="wo is not a Linear layer of the qwen2 model x"):
        target_layers(ARCHITECTURES["Qwen/Qwen2.5-0.5B"], ["q", "wo"], model="x")


def test_target_errors_stay_one_short_line() -> None:
    qwen = ARCHITECTURES["Qwen/Qwen2.5-0.5B"]
    with pytest.raises(ValueError) as many:
        target_layers(qwen, [f"layer{i}" for i in range(10_000)])
    message = str(many.value)
    assert "layer0, layer1, layer2, layer3, layer4 and 9995 more are not Linear layers" in message
    assert len(message) < 300
    with pytest.raises(ValueError) as odd:
        target_layers(qwen, ["", "a\nb", " q"])
    assert "\n" not in str(odd.value)
    assert "'', 'a\\nb', ' q' are not" in str(odd.value)
