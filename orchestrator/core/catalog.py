"""The model architectures Ladder knows without a download, as plain numbers.

The worker builds models from these (with `init: random`), the memory estimator and the
FLOPs model read them. Two families of shapes: FLAN-T5 (encoder-decoder, `T5Architecture`)
and decoder-only causal LMs (`DecoderArchitecture`: Qwen2.5, Llama 3.x, SmolLM2). Every figure
is copied from the model's public `config.json`; nothing is read from the hub at run time, and
tests/unit/core/test_catalog.py checks each parameter count against the published total.

The `ladder/t5-tiny-*` ladder exists so a sweep climbs and hits a memory budget on a CPU in
minutes: tiny-s and tiny-m are small and quick to train, tiny-l carries FLAN-T5's 32,128-token
vocabulary, so its embedding and LM head alone (about 33M parameters) dwarf the other two in
memory while costing little compute before its out-of-memory verdict. The decoder-only
`ladder/qwen-tiny-*` ladder does the same with SmolLM2's vocabulary (see ARCHITECTURES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

FLAN_T5_VOCAB = 32128
QWEN2_VOCAB = 151936
LLAMA3_VOCAB = 128256
SMOLLM2_VOCAB = 49152


class LinearLayer(NamedTuple):
    """One kind of block nn.Linear: its short name (`training.targetModules` takes it), its
    in and out features, and how many the model has (every block and attention kind)."""

    name: str
    d_in: int
    d_out: int
    count: int


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

    family: Literal["t5"] = "t5"
    causal: bool = False  # encoder-decoder: inputs and targets are separate sequences

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

    def linear_layers(self) -> list[LinearLayer]:
        """Every block Linear by name: q, k, v, o in self-attention (both stacks) and
        cross-attention (decoder), wi (or wi_0 and wi_1, gated) and wo in the FFN."""
        d, inner, ff = self.d_model, self.inner_dim, self.d_ff
        enc, dec = self.num_layers, self.num_decoder_layers
        attention = enc + 2 * dec  # self-attention in both stacks, cross-attention in dec
        wi = ("wi_0", "wi_1") if self.feed_forward_proj.startswith("gated") else ("wi",)
        return [
            *(LinearLayer(name, d, inner, attention) for name in ("q", "k", "v")),
            LinearLayer("o", inner, d, attention),
            *(LinearLayer(name, d, ff, enc + dec) for name in wi),
            LinearLayer("wo", ff, d, enc + dec),
        ]

    def linear_shapes(self) -> list[tuple[int, int, int]]:
        """(in_features, out_features, count) of every block Linear, for adapter sizing."""
        return [(layer.d_in, layer.d_out, layer.count) for layer in self.linear_layers()]


@dataclass(frozen=True, slots=True)
class DecoderArchitecture:
    """A Llama-shaped decoder-only causal LM: pre-RMSNorm blocks, grouped-query attention with
    rotary positions, SwiGLU MLP (gate, up, down). `family` is the transformers `model_type`
    (`llama`, also SmolLM2; `qwen2`, whose q/k/v projections carry biases)."""

    family: Literal["llama", "qwen2"]
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, str | float | int], ...] | None = None  # Llama 3.1/3.2
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    causal: bool = True  # prompt and completion are one sequence

    @property
    def attention_bias(self) -> bool:
        return self.family == "qwen2"

    @property
    def d_model(self) -> int:
        """The residual width, by the name the T5 side uses."""
        return self.hidden_size

    @property
    def d_ff(self) -> int:
        return self.intermediate_size

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.dim_per_head

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.dim_per_head

    @property
    def attention_params(self) -> int:
        weights = 2 * self.hidden_size * self.q_dim + 2 * self.hidden_size * self.kv_dim
        bias = self.q_dim + 2 * self.kv_dim if self.attention_bias else 0
        return weights + bias

    @property
    def ffn_params(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size  # gate, up, down

    @property
    def block_params(self) -> int:
        return self.attention_params + self.ffn_params + 2 * self.hidden_size  # two RMSNorms

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """The head's own parameters: none when it is the input embedding (tied)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def head_weight_elements(self) -> int:
        """Elements of the weight the head multiplies by, tied or not (for activations)."""
        return self.vocab_size * self.hidden_size

    @property
    def parameters(self) -> int:
        return (
            self.embedding_params + self.lm_head_params + self.num_layers * self.block_params
            + self.hidden_size  # final norm
        )

    @property
    def linear_params(self) -> int:
        """Weights of the blocks' nn.Linear layers (biases excluded): what LoRA targets
        and NF4 quantizes."""
        return sum(d_in * d_out * count for d_in, d_out, count in self.linear_shapes())

    def linear_layers(self) -> list[LinearLayer]:
        """Every block Linear by short name (q, k, v, o, gate, up, down; transformers names
        them `q_proj`, ...), one of each per layer."""
        d, q, kv, ff, n = (
            self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size, self.num_layers
        )
        return [
            LinearLayer("q", d, q, n), LinearLayer("k", d, kv, n), LinearLayer("v", d, kv, n),
            LinearLayer("o", q, d, n), LinearLayer("gate", d, ff, n), LinearLayer("up", d, ff, n),
            LinearLayer("down", ff, d, n),
        ]

    def linear_shapes(self) -> list[tuple[int, int, int]]:
        """(in_features, out_features, count) of every block Linear, for adapter sizing."""
        return [(layer.d_in, layer.d_out, layer.count) for layer in self.linear_layers()]


Architecture = T5Architecture | DecoderArchitecture

#: The block Linear layers LoRA may target in a decoder-only model, by their short names
#: (q, k, v, o, gate, up, down); `all-linear` takes every one (peft leaves the LM head out).
DECODER_LORA_TARGETS: dict[str, str] = {
    "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
    "gate": "gate_proj", "up": "up_proj", "down": "down_proj",
}
#: T5's block Linear layers (they already have short names).
T5_LORA_TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
ALL_LINEAR = "all-linear"


#: How many unknown names an error quotes before it counts the rest.
_NAMES_SHOWN = 5


def _shown(name: str) -> str:
    """A name as an error quotes it: as written, or repr'd when it is blank or holds a
    character that would break the one-line message."""
    return name if name and name.isprintable() and name.strip() == name else repr(name)


def _not_a_layer(unknown: list[str], of: str, choices: list[str]) -> ValueError:
    names = ", ".join(_shown(name) for name in unknown[:_NAMES_SHOWN])
    if len(unknown) > _NAMES_SHOWN:
        names += f" and {len(unknown) - _NAMES_SHOWN} more"
    what = "is not a Linear layer" if len(unknown) == 1 else "are not Linear layers"
    return ValueError(
        f"training.targetModules: {names} {what} of {of} "
        f"(choose from {', '.join([ALL_LINEAR, *choices])})"
    )


def lora_targets(
    family: str, requested: str | list[str], *, of: str | None = None
) -> str | list[str]:
    """`training.targetModules` as peft's `target_modules` for a model of `family` (`t5`, or
    any decoder-only family): `all-linear`, or the module names (decoder-only: `q` or
    `q_proj`, ...). ValueError names an unknown one, and the model as `of` says (default:
    "a <family> model")."""
    if isinstance(requested, str):
        if requested == ALL_LINEAR:
            return ALL_LINEAR
        requested = [requested]
    if family == "t5":
        known: dict[str, str] = {name: name for name in T5_LORA_TARGETS}
    else:
        known = {**DECODER_LORA_TARGETS, **{v: v for v in DECODER_LORA_TARGETS.values()}}
    unknown = list(dict.fromkeys(name for name in requested if name not in known))
    if unknown:
        raise _not_a_layer(unknown, of or f"a {family} model", list(known))
    return list(dict.fromkeys(known[name] for name in requested))


def target_layers(
    arch: Architecture, requested: str | list[str], *, model: str | None = None
) -> list[LinearLayer]:
    """The block Linears of `arch` that `training.targetModules` = `requested` puts LoRA
    adapters on. peft matches each name against the last component of a module's name, so
    `q` takes T5's q in self- and cross-attention alike; `all-linear` takes every block
    Linear (peft leaves the LM head out). ValueError (naming the field, the name, `model`
    and the choices) when a name is no Linear layer of the family (`lora_targets`) or of
    this architecture (T5's `wi` where the FFN is gated: wi_0 and wi_1)."""
    of = f"the {arch.family} model {model}" if model else f"a {arch.family} model"
    targets = lora_targets(arch.family, requested, of=of)
    layers = arch.linear_layers()
    if targets == ALL_LINEAR:
        return layers
    short = {long: name for name, long in DECODER_LORA_TARGETS.items()}
    wanted = {short.get(name, name) for name in targets}
    present = {layer.name for layer in layers}
    missing = [name for name in targets if short.get(name, name) not in present]
    if missing:
        raise _not_a_layer(missing, of, [layer.name for layer in layers])
    return [layer for layer in layers if layer.name in wanted]


def _qwen2(d: int, ff: int, layers: int, heads: int, kv: int, *, vocab: int = QWEN2_VOCAB,
           tied: bool = True) -> DecoderArchitecture:
    return DecoderArchitecture(
        family="qwen2", hidden_size=d, intermediate_size=ff, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, vocab_size=vocab, tie_word_embeddings=tied,
        rope_theta=1000000.0, max_position_embeddings=32768, rms_norm_eps=1e-6,
    )


def _llama3(d: int, ff: int, layers: int, heads: int, kv: int, *, tied: bool, factor: float,
            head_dim: int | None = None) -> DecoderArchitecture:
    return DecoderArchitecture(
        family="llama", hidden_size=d, intermediate_size=ff, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, vocab_size=LLAMA3_VOCAB, tie_word_embeddings=tied,
        head_dim=head_dim, rope_theta=500000.0, max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_scaling=(
            ("rope_type", "llama3"), ("factor", factor), ("low_freq_factor", 1.0),
            ("high_freq_factor", 4.0), ("original_max_position_embeddings", 8192),
        ),
    )


def _smollm2(d: int, ff: int, layers: int, heads: int, kv: int, theta: float
             ) -> DecoderArchitecture:
    return DecoderArchitecture(
        family="llama", hidden_size=d, intermediate_size=ff, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, vocab_size=SMOLLM2_VOCAB, tie_word_embeddings=True,
        rope_theta=theta, max_position_embeddings=8192, rms_norm_eps=1e-5,
    )


ARCHITECTURES: dict[str, Architecture] = {
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
    # Decoder-only, from the public config.json of each (Qwen2.5 and Llama 3.2 tie their
    # embeddings below 7B; Qwen2.5-7B and Llama 3.1 8B have an LM head of their own).
    "Qwen/Qwen2.5-0.5B": _qwen2(896, 4864, 24, 14, 2),
    "Qwen/Qwen2.5-1.5B": _qwen2(1536, 8960, 28, 12, 2),
    "Qwen/Qwen2.5-3B": _qwen2(2048, 11008, 36, 16, 2),
    "Qwen/Qwen2.5-7B": _qwen2(3584, 18944, 28, 28, 4, vocab=152064, tied=False),
    "meta-llama/Llama-3.2-1B": _llama3(2048, 8192, 16, 32, 8, tied=True, factor=32.0,
                                       head_dim=64),
    "meta-llama/Llama-3.2-3B": _llama3(3072, 8192, 28, 24, 8, tied=True, factor=32.0,
                                       head_dim=128),
    "meta-llama/Llama-3.1-8B": _llama3(4096, 14336, 32, 32, 8, tied=False, factor=8.0),
    "HuggingFaceTB/SmolLM2-135M": _smollm2(576, 1536, 30, 9, 3, 100000.0),
    "HuggingFaceTB/SmolLM2-360M": _smollm2(960, 2560, 32, 15, 5, 100000.0),
    "HuggingFaceTB/SmolLM2-1.7B": _smollm2(2048, 8192, 24, 32, 32, 130000.0),
    # Tiny decoder-only ladder (Qwen2-shaped, tied embeddings) for CPU tests and the
    # quickstart: s and m fit the byte tokenizer's 259 ids in 384 rows; l carries SmolLM2's
    # 49,152-token vocabulary, whose tied embedding (and the logits over every token of the
    # prompt and completion) dwarf the other two in memory. llama-tiny-s is a Llama-shaped
    # twin of qwen-tiny-s (no q/k/v biases) so that both families are tested.
    "ladder/qwen-tiny-s": _qwen2(64, 128, 2, 4, 2, vocab=384),
    "ladder/qwen-tiny-m": _qwen2(128, 384, 3, 4, 2, vocab=384),
    "ladder/qwen-tiny-l": _qwen2(512, 1024, 2, 8, 2, vocab=SMOLLM2_VOCAB),
    "ladder/llama-tiny-s": DecoderArchitecture(
        family="llama", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, vocab_size=384, tie_word_embeddings=True, rms_norm_eps=1e-5,
    ),
}

# Models that exist only as architectures: always random init, byte tokenizer, no download.
BUILTIN_ONLY = frozenset(name for name in ARCHITECTURES if name.startswith("ladder/"))


#: Suffixes of fine-tuned variants that keep their base model's architecture.
_VARIANT_SUFFIXES = ("-Instruct", "-instruct", "-Chat", "-chat")


def architecture(model: str) -> Architecture | None:
    """The architecture of a known model id (or local path ending in one, or an `-Instruct`
    variant of one), else None."""
    if model in ARCHITECTURES:
        return ARCHITECTURES[model]
    tail = model.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _VARIANT_SUFFIXES:
        tail = tail.removesuffix(suffix)
    for name, arch in ARCHITECTURES.items():
        if name.rsplit("/", 1)[-1] == tail:
            return arch
    return None
