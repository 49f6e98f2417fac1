"""Build a trial's model for its method: full fine-tuning, LoRA (peft) or QLoRA (NF4 + LoRA).

Two families: FLAN-T5 (encoder-decoder) and decoder-only causal LMs (Qwen2.5, Llama 3.x,
SmolLM2; `orchestrator.core.catalog.DecoderArchitecture`). Two ways to get weights:
- `init: random` (and every `ladder/*` model, which exists only as an architecture): a
  `T5ForConditionalGeneration`, or a transformers config -> `AutoModelForCausalLM`, built from
  the catalogue's numbers, nothing downloaded.
- `init: pretrained`: `from_pretrained` on a local path or hub id; the config says which
  family (`is_encoder_decoder`).

A decoder-only model's head is tied to its embedding exactly when the catalogue says so
(`tie_word_embeddings`, which transformers honours for Llama and Qwen2), and attention is
SDPA. LoRA targets the blocks' q/k/v/o/gate/up/down projections (`catalog.lora_targets`).

FLAN-T5 (T5 v1.1) has an LM head of its own, not tied to the input embedding, and does not
scale decoder outputs by d_model**-0.5. transformers 5 forces `tie_word_embeddings=True` for
T5 in `T5Config.__post_init__` (and derives `scale_decoder_outputs` from the flag it was
given), so a random model is built tied and then untied here: the head gets a fresh Parameter
and the config says untied, so no later `tie_weights()` ties it back. Parameter counts then
match the published ones (tests/unit/worker/test_models.py).

QLoRA quantizes what transformers' bitsandbytes path quantizes: every block nn.Linear except
`wo` (T5 keeps it in fp32, `_keep_in_fp32_modules`) and the LM head.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    T5Config,
    T5ForConditionalGeneration,
)

from orchestrator.core.catalog import (
    BUILTIN_ONLY,
    Architecture,
    DecoderArchitecture,
    T5Architecture,
    architecture,
    lora_targets,
)
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import ModelInit, Precision, Training, WeightDtype
from orchestrator.core.worker_contract import AttemptSpec
from worker.tokenizer import HFTokenizer, TextTokenizer, load_tokenizer

__all__ = [
    "ModelInfo",
    "ModelLoadError",
    "build_model",
    "cast_frozen_weights",
    "compute_dtype",
    "count_parameters",
    "fit_embeddings",
    "import_method_libraries",
    "keep_off_cpu_packed_path",
    "quantize_nf4",
    "random_decoder",
    "random_model",
    "random_t5",
    "save_trained",
]

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model or tokenizer cannot be loaded (unknown id, offline, missing files)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    trainable_parameters: int
    total_parameters: int
    quantized: bool
    causal: bool = False  # decoder-only: prompt and completion form one sequence


def import_method_libraries(method: Method) -> None:
    """Import what building a model of `method` needs, and nothing more: peft for LoRA and
    QLoRA, bitsandbytes for QLoRA (seconds each on a small CPU; a full fine-tune needs
    neither). The worker calls it before its host-memory baseline, so the libraries' own pages
    are not charged to the trial's budget; `build_model` imports them anyway when needed."""
    if method.uses_adapters:
        import peft  # noqa: F401
    if method is Method.QLORA:
        import bitsandbytes  # noqa: F401


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) elements. `parameters()` yields a shared tensor once; a 4-bit weight
    counts its logical elements (bitsandbytes packs two per byte), as peft reports them."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def compute_dtype(training: Training) -> torch.dtype:
    return torch.float32 if training.precision is Precision.FP32 else torch.bfloat16


WEIGHT_DTYPES = {
    WeightDtype.FP32: torch.float32, WeightDtype.BF16: torch.bfloat16,
    WeightDtype.FP16: torch.float16,
}


def cast_frozen_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """training.qloraWeightDtype: cast QLoRA's frozen floating-point weights that are not
    quantized (norms, embeddings, LM head) to `dtype`, as the authors' transformers 4.45 load
    left them (fp16). Modules T5 keeps in fp32 (`_keep_in_fp32_modules`: `wo`) stay fp32, as
    transformers keeps them. Trainable weights (none yet: it runs before peft adds the
    adapters) are left alone. Returns how many tensors it cast."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    cast = 0
    for name, param in model.named_parameters():
        if param.requires_grad or not param.is_floating_point() or param.dtype == dtype:
            continue
        if param.__class__.__name__ == "Params4bit" or any(
                f".{module}." in f".{name}" for module in keep):
            continue
        param.data = param.data.to(dtype)
        cast += 1
    return cast


def t5_config(arch: T5Architecture, attention: str = "sdpa") -> T5Config:
    # tie_word_embeddings=False is what makes T5Config set scale_decoder_outputs=False (T5
    # v1.1); the tie flag itself is forced True by transformers 5 and corrected after build.
    return T5Config(
        vocab_size=arch.vocab_size,
        d_model=arch.d_model,
        d_ff=arch.d_ff,
        d_kv=arch.d_kv,
        num_heads=arch.num_heads,
        num_layers=arch.num_layers,
        num_decoder_layers=arch.num_decoder_layers,
        relative_attention_num_buckets=arch.relative_attention_num_buckets,
        relative_attention_max_distance=arch.relative_attention_max_distance,
        feed_forward_proj=arch.feed_forward_proj,
        tie_word_embeddings=False,
        decoder_start_token_id=0,  # pad, as in every T5; the byte tokenizer's pad is 0 too
        attn_implementation=attention,
    )


def untie_lm_head(model: T5ForConditionalGeneration, *, reinitialise: bool) -> None:
    """Give the LM head its own weight and make the config say so."""
    if model.lm_head.weight is model.shared.weight and reinitialise:
        weight = torch.empty_like(model.lm_head.weight)
        if weight.device.type != "meta":
            # T5PreTrainedModel._init_weights' rule for an untied head.
            nn.init.normal_(weight, mean=0.0, std=model.config.initializer_factor)
        model.lm_head.weight = nn.Parameter(weight)
    model.config.tie_word_embeddings = False
    tied = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied, dict):
        tied.pop("lm_head.weight", None)  # so save_pretrained writes the head


def random_t5(arch: T5Architecture, attention: str = "sdpa") -> T5ForConditionalGeneration:
    """A randomly initialised FLAN-T5-shaped model (on the current default device), with
    `attention` as its attention implementation (training.attention)."""
    model = T5ForConditionalGeneration(t5_config(arch, attention))
    untie_lm_head(model, reinitialise=True)
    return model


def decoder_config(arch: DecoderArchitecture, attention: str = "sdpa") -> PretrainedConfig:
    """The transformers config of a catalogued decoder-only model (its public config.json)."""
    common: dict[str, Any] = {
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "max_position_embeddings": arch.max_position_embeddings,
        "rms_norm_eps": arch.rms_norm_eps,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "attn_implementation": attention,
        # The byte tokenizer's ids (pad 0, eos 1); a pretrained tokenizer brings its own.
        "pad_token_id": 0, "bos_token_id": None, "eos_token_id": 1,
    }
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": arch.rope_theta}
    if arch.rope_scaling is not None:
        rope = {**dict(arch.rope_scaling), "rope_theta": arch.rope_theta}
    if arch.family == "qwen2":
        return Qwen2Config(**common, rope_parameters=rope, use_sliding_window=False)
    return LlamaConfig(**common, head_dim=arch.dim_per_head, rope_parameters=rope,
                       attention_bias=False, mlp_bias=False)


def random_decoder(arch: DecoderArchitecture, attention: str = "sdpa") -> PreTrainedModel:
    """A randomly initialised decoder-only model (on the current default device)."""
    model = AutoModelForCausalLM.from_config(decoder_config(arch, attention))
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if tied != arch.tie_word_embeddings:
        raise RuntimeError(f"transformers built the LM head {'tied' if tied else 'untied'}; "
                           f"the {arch.family} config says tie_word_embeddings="
                           f"{arch.tie_word_embeddings}")
    return model


def random_model(arch: Architecture, attention: str = "sdpa") -> PreTrainedModel:
    """A randomly initialised model of a catalogued architecture, with `attention` as its
    attention implementation (training.attention)."""
    if isinstance(arch, T5Architecture):
        return random_t5(arch, attention)
    return random_decoder(arch, attention)


def quantize_nf4(model: PreTrainedModel, dtype: torch.dtype, *, double_quant: bool) -> int:
    """Replace block nn.Linear layers by bitsandbytes NF4 `Linear4bit`, in memory.

    `double_quant` (training.qloraDoubleQuant) is bitsandbytes' `compress_statistics`: the
    same switch as `bnb_4bit_use_double_quant` on the pretrained path.

    The weights quantize when the model is moved to a device (`.to(device)`), on CPU too. Not
    through save + from_pretrained: transformers 5 would re-tie the LM head on reload.
    Returns how many layers were replaced.
    """
    import bitsandbytes as bnb

    keep = set(getattr(model, "_keep_in_fp32_modules", None) or []) | {"lm_head"}
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or name in keep:
                continue
            quantized = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=dtype,
                compress_statistics=double_quant,
                quant_type="nf4",
            )
            quantized.weight = bnb.nn.Params4bit(
                data=child.weight.data, requires_grad=False, quant_type="nf4",
                compress_statistics=double_quant,
            )
            if child.bias is not None:
                quantized.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, quantized)
            replaced += 1
    return replaced


def keep_off_cpu_packed_path(model: nn.Module) -> int:
    """Keep every NF4 layer on bitsandbytes' one CPU path, in training and evaluation alike.

    On CPUs with AVX512-BF16, bitsandbytes 0.50's `Linear4bit.forward` repacks a layer's weight
    for a fused kernel the first time it runs outside training mode without grad (evaluation,
    generation). That path (1) asserts `out_features % 32 == 0`, so an evaluation of any model
    with a 16-wide projection dies with "N must be divisible by block_n"; (2) computes in bf16,
    so the same trial's eval loss differs between CPU kinds; and (3) keeps the packed layout
    when training resumes, where no gradient flows back through the frozen base to earlier
    layers: QLoRA would silently train on wrong gradients from the second epoch on. Ladder turns
    the module's fast-path flag off, so every CPU runs the path the training step runs. CUDA is
    unaffected (the flag only applies to CPU inputs). Returns how many layers it set.
    """
    import bitsandbytes as bnb

    layers = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            layers += 1
    return layers


def _from_pretrained(trial: AttemptSpec, device: torch.device) -> PreTrainedModel:
    # Every method loads straight onto its device: without a device map each rank would
    # first materialise the whole fp32 model in host memory (about 11 GB per rank for XL).
    kwargs: dict[str, object] = {
        "device_map": {"": device}, "attn_implementation": trial.training.attention.value,
    }
    if trial.method is Method.QLORA:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype(trial.training),
            bnb_4bit_use_double_quant=trial.training.qlora_double_quant,
        )
    else:
        # Full and LoRA train fp32 master weights; bf16 comes from autocast.
        kwargs["dtype"] = torch.float32
    try:
        config = AutoConfig.from_pretrained(trial.model)
        if not config.is_encoder_decoder:
            return AutoModelForCausalLM.from_pretrained(  # type: ignore[no-any-return]
                trial.model, **kwargs)
        model = T5ForConditionalGeneration.from_pretrained(trial.model, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load pretrained model {trial.model!r}: {error}. Use a local path, make the "
            "hub reachable (or HF_HUB_OFFLINE=0), or set training.init: random"
        ) from error
    if model.lm_head.weight is not model.shared.weight:
        untie_lm_head(model, reinitialise=False)  # FLAN-T5's own head: keep it untied
    elif architecture(trial.model) is not None:
        log.warning("%s loaded with its LM head tied to the embedding", trial.model)
    return model


def _tokenizer(trial: AttemptSpec, random_init: bool) -> TextTokenizer:
    name = trial.training.tokenizer
    if name is None:
        name = "byte" if random_init else trial.model
    try:
        return load_tokenizer(name)
    except OSError as error:
        raise ModelLoadError(f"cannot load tokenizer {name!r}: {error}") from error


def fit_embeddings(model: PreTrainedModel, tokenizer: TextTokenizer) -> None:
    """Grow the embedding and LM head when the tokenizer has more ids than the model has rows.

    Only ids added to a pretrained tokenizer (see `worker.tokenizer`) can need it; FLAN-T5's
    spare rows usually hold them. New rows get transformers' mean-of-the-rest initialisation.
    """
    rows = model.get_input_embeddings().num_embeddings
    if tokenizer.vocab_size <= rows:
        return
    log.info("growing %d embedding rows to %d for the tokenizer", rows, tokenizer.vocab_size)
    model.resize_token_embeddings(tokenizer.vocab_size)


def build_model(
    trial: AttemptSpec, device: torch.device
) -> tuple[nn.Module, TextTokenizer, ModelInfo]:
    """The trial's model on `device`, ready to train, with its tokenizer and parameter counts."""
    training = trial.training
    if training.precision not in (Precision.BF16, Precision.FP32):
        raise ValueError(f"precision {training.precision} is not supported")
    random_init = training.init is ModelInit.RANDOM or trial.model in BUILTIN_ONLY
    tokenizer = _tokenizer(trial, random_init)
    dtype = compute_dtype(training)

    if random_init:
        arch = architecture(trial.model)
        if arch is None:
            raise ModelLoadError(
                f"{trial.model!r} has no built-in architecture, so init: random cannot build "
                f"it; known: see orchestrator.core.catalog.ARCHITECTURES"
            )
        if tokenizer.vocab_size > arch.vocab_size:
            raise ValueError(
                f"{trial.model} has {arch.vocab_size} embeddings, fewer than the "
                f"{tokenizer.vocab_size} ids of its tokenizer"
            )
        if trial.method is Method.QLORA:
            # Built on the host: the weights quantize as they move, so only NF4 reaches the
            # device (building there would put the whole fp32 model on it first).
            model: nn.Module = random_model(arch, training.attention.value)
            quantize_nf4(model, dtype, double_quant=training.qlora_double_quant)
        else:
            with torch.device(device):  # initialised in place, no host copy
                model = random_model(arch, training.attention.value)
        model = model.to(device)  # quantizes the Params4bit weights
    else:
        model = _from_pretrained(trial, device)  # already on the device
        fit_embeddings(model, tokenizer)
    if trial.method is Method.QLORA:
        keep_off_cpu_packed_path(model)
    causal = not model.config.is_encoder_decoder

    if trial.method.uses_adapters:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if trial.rank is None or trial.alpha is None:
            raise ValueError(f"method {trial.method} needs a LoRA rank and alpha")
        if trial.method is Method.QLORA:
            # Freezes the base, upcasts norms to fp32; gradient checkpointing is set below for
            # every method alike, so it is not asked for here.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            # prepare_model_for_kbit_training upcast the frozen weights to fp32.
            cast_frozen_weights(model, WEIGHT_DTYPES[training.qlora_weight_dtype])
        targets = lora_targets("llama" if causal else "t5", training.target_modules)
        model = get_peft_model(
            model,
            LoraConfig(
                r=trial.rank,
                lora_alpha=trial.alpha,
                target_modules=targets,
                lora_dropout=training.lora_dropout,
                bias="none",
                task_type="CAUSAL_LM" if causal else "SEQ_2_SEQ_LM",
            ),
        )
    if training.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (embeddings may be
        # frozen). transformers 5 names it activation checkpointing.
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
        model.config.use_cache = False

    trainable, total = count_parameters(model)
    info = ModelInfo(trainable, total, quantized=trial.method is Method.QLORA, causal=causal)
    log.info("%s %s: %d of %d parameters trainable", trial.model, trial.method, trainable, total)
    return model, tokenizer, info


MANIFEST = "ladder-model.json"
OPTIMIZER_STATE = "optimizer.pt"


def save_trained(
    model: nn.Module, tokenizer: TextTokenizer, directory: Path, manifest: dict[str, Any],
    *, optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write the trained weights to `directory`, replacing what is there only once complete.

    A peft model writes its adapter (what LoRA and QLoRA trained; load it over the base model
    named in the manifest), a full fine-tune the whole model. A pretrained tokenizer is saved
    with it, its added characters included; the byte tokenizer needs no files. The weights go
    to a sibling directory first and are swapped in by rename, so a trial stopped mid-write
    leaves the previous save (or none), never half of one. `optimizer_state` (saveModel
    every-epoch, the authors' checkpoint) is written with it as `optimizer.pt`.
    """
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(str(staging))  # type: ignore[operator]
    if optimizer_state is not None:
        torch.save(optimizer_state, staging / OPTIMIZER_STATE)
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.save_pretrained(str(staging))
        manifest = {**manifest, "tokenizer": "included"}
    else:
        manifest = {**manifest, "tokenizer": "byte"}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    previous = directory.with_name(directory.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if directory.exists():
        directory.rename(previous)
    staging.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory
