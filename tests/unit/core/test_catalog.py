"""The decoder-only catalogue: parameter counts from each public config against the published
totals (tied embeddings counted once), and LoRA target names."""

from __future__ import annotations

import pytest

from orchestrator.core.catalog import (
    ARCHITECTURES,
    BUILTIN_ONLY,
    DecoderArchitecture,
    architecture,
    lora_targets,
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
