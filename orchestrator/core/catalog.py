"""The model architectures Ladder knows without a download, as plain numbers.

The worker builds models from these (with `init: random`), the memory estimator and the
FLOPs model read them. FLAN-T5 figures are the public model configs; the `ladder/t5-tiny-*`
ladder exists so a sweep climbs and hits a memory budget on a CPU in minutes: tiny-s and
tiny-m are small and quick to train, tiny-l carries FLAN-T5's 32,128-token vocabulary, so
its embedding and LM head alone (about 33M parameters) dwarf the other two in memory while
costing little compute before its out-of-memory verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

FLAN_T5_VOCAB = 32128


@dataclass(frozen=True, slots=True)
class T5Architecture:
    """A T5 v1.1 / FLAN-T5 shaped encoder-decoder (gated-GELU, untied LM head)."""

    d_model: int
    d_ff: int
    d_kv: int
    num_heads: int
    num_layers: int  # encoder blocks
    num_decoder_layers: int
    vocab_size: int = FLAN_T5_VOCAB
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "gated-gelu"

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @property
    def attention_params(self) -> int:
        return 4 * self.d_model * self.inner_dim  # q, k, v, o

    @property
    def ffn_params(self) -> int:
        gates = 2 if self.feed_forward_proj.startswith("gated") else 1
        return (gates + 1) * self.d_model * self.d_ff

    @property
    def encoder_params(self) -> int:
        per_block = self.attention_params + self.ffn_params + 2 * self.d_model
        bias = self.relative_attention_num_buckets * self.num_heads
        return self.num_layers * per_block + bias + self.d_model

    @property
    def decoder_params(self) -> int:
        per_block = 2 * self.attention_params + self.ffn_params + 3 * self.d_model
        bias = self.relative_attention_num_buckets * self.num_heads
        return self.num_decoder_layers * per_block + bias + self.d_model

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.d_model  # shared input embedding

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.d_model  # untied, as in T5 v1.1 / FLAN-T5

    @property
    def parameters(self) -> int:
        return (
            self.embedding_params + self.lm_head_params + self.encoder_params + self.decoder_params
        )

    @property
    def linear_params(self) -> int:
        """Parameters in the blocks' nn.Linear layers: what LoRA targets and NF4 quantizes."""
        return (
            self.num_layers * (self.attention_params + self.ffn_params)
            + self.num_decoder_layers * (2 * self.attention_params + self.ffn_params)
        )

    def linear_shapes(self) -> list[tuple[int, int, int]]:
        """(in_features, out_features, count) of every block Linear, for adapter sizing."""
        d, inner, ff = self.d_model, self.inner_dim, self.d_ff
        gates = 2 if self.feed_forward_proj.startswith("gated") else 1
        enc, dec = self.num_layers, self.num_decoder_layers
        return [
            (d, inner, 3 * enc + 6 * dec),  # q, k, v (self and cross attention)
            (inner, d, enc + 2 * dec),  # o
            (d, ff, gates * (enc + dec)),  # wi / wi_0, wi_1
            (ff, d, enc + dec),  # wo
        ]


ARCHITECTURES: dict[str, T5Architecture] = {
    "google/flan-t5-small": T5Architecture(
        d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8
    ),
    "google/flan-t5-base": T5Architecture(
        d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12
    ),
    "google/flan-t5-large": T5Architecture(
        d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=24, num_decoder_layers=24
    ),
    "google/flan-t5-xl": T5Architecture(
        d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24, num_decoder_layers=24
    ),
    # Tiny ladder for CPU tests and the quickstart (see the module docstring).
    "ladder/t5-tiny-s": T5Architecture(
        d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
        vocab_size=384,
    ),
    "ladder/t5-tiny-m": T5Architecture(
        d_model=128, d_ff=384, d_kv=32, num_heads=4, num_layers=3, num_decoder_layers=3,
        vocab_size=384,
    ),
    "ladder/t5-tiny-l": T5Architecture(
        d_model=512, d_ff=1024, d_kv=64, num_heads=8, num_layers=2, num_decoder_layers=2,
    ),
}

# Models that exist only as architectures: always random init, byte tokenizer, no download.
BUILTIN_ONLY = frozenset(name for name in ARCHITECTURES if name.startswith("ladder/"))


def architecture(model: str) -> T5Architecture | None:
    """The architecture of a known model id (or local path ending in one), else None."""
    if model in ARCHITECTURES:
        return ARCHITECTURES[model]
    tail = model.rstrip("/").rsplit("/", 1)[-1]
    for name, arch in ARCHITECTURES.items():
        if name.rsplit("/", 1)[-1] == tail:
            return arch
    return None
