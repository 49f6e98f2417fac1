"""Memory and FLOPs of one training step of a T5 trial, from the architecture alone (pure).

`estimate_memory` predicts the peak device memory of one Ray Train worker running the
worker's step (worker/train.py): DSS forward of the `predict:` task, forward of the
`explain:` task, one backward through the summed loss, a fused AdamW step. It is the
count of what is resident at the peak, tensor by tensor, with these assumptions (each is a
fact of the code the worker runs, or a stated simplification):

Parameters and optimizer
- Full and LoRA keep fp32 master weights (worker/models.py); bf16 comes from autocast.
  Gradients are fp32, one per trainable parameter; AdamW keeps 2 fp32 states per trainable
  parameter (8 bytes). Gradients are set to None after every step (`zero_grad(set_to_none)`).
- LoRA and QLoRA put adapters on the block nn.Linears `training.targetModules` selects
  (`catalog.target_layers`: `all-linear`, every one, which in peft excludes the LM head; or
  a list such as [q, v]), adapter weights in fp32; the base is frozen. The adapters'
  parameters, gradients, optimizer states, activations and FLOPs count only those layers;
  QLoRA quantizes every block Linear whichever carry adapters.
- QLoRA (NF4): every block Linear except `wo` is 4-bit (0.5 byte per weight) with blockwise
  absmax constants, 64 weights per block: with double quantization
  (`training.qloraDoubleQuant`, the default; the worker applies the same setting on both its
  paths) one 8-bit absmax per block and one fp32 per 256 blocks, without it one fp32 absmax
  per block. T5's `wo` stays fp32 (`_keep_in_fp32_modules`), as do the embedding, the LM
  head and the norms (`prepare_model_for_kbit_training` upcasts them).
- Data parallelism (more than one worker): DDP keeps flat gradient buckets, one more fp32
  copy of the trainable gradients.

Activations (saved for backward), per token and per layer, for `Precision.BF16` under CUDA
autocast (matmul outputs bf16, 2 bytes; softmax, pow and the loss in fp32) or `Precision.FP32`
(4 bytes everywhere):
- The residual stream is fp32 (fp32 embeddings and norms), T5's RMSNorm saves its input, and
  with trainable norm weights (full) also its normalised output.
- Full fine-tuning saves every Linear's input for the weight gradient; under autocast each
  Linear casts its fp32 input on its own (q, k, v: three bf16 copies); in fp32, Linears that
  share an input share the saved tensor. Adapter methods save no base-Linear inputs (frozen
  weights need no weight gradient) but each adapter saves its dropout mask, its cast input and
  its rank-r intermediate (`loraDropout` > 0 assumed).
- Attention: q, k, v outputs and the attention output. The score-sized tensors (batch x heads
  x Lq x Lk) per layer: `sdpa` (transformers 5's default for T5; CUDA's memory-efficient
  kernel, which takes T5's additive position bias) saves only the bias in the compute dtype;
  `eager` saves the fp32 softmax output, the dropout mask and the dropout output (bf16 cast
  for the matmul, or fp32), and copies of q, k^T and v (torch.matmul's bmm folding of the
  transposed views). The relative position bias itself (heads x Lq x Lk, fp32) is
  computed once per stack.
- Gated-GELU FFN: T5's `gelu_new` is a Python formula, so autograd saves wi_0's output, the
  tanh output, 0.5x, 1 + tanh, the GELU output and wi_1's output (18 bytes per d_ff element
  under autocast, where pow/tanh run in fp32; 24 in fp32), plus dropout masks.
- The decoder adds cross-attention: k and v are computed from the encoder output (input
  tokens) in every layer; scores are batch x heads x output x input tokens.
- The loss: the LM head's logits (vocab x output tokens) are cast to fp32 for the
  cross-entropy, whose log-softmax output (fp32) is saved; during the loss and its backward a
  few more logits-sized buffers exist at once (the "logits transient").
- Weight copies: under autocast, a frozen fp32 weight is cast to bf16 at every call and the
  copy is saved for the input gradient (LoRA: every block Linear and the LM head, once per
  forward; QLoRA: `wo` and the LM head, since bitsandbytes dequantizes in backward again);
  a trainable weight's copy is cached once per autocast region (full).
- `dss_two_tasks`: both tasks' graphs are alive until the one backward (worker.train.dss_forward),
  so activations count twice; with DSS loss weight a = 1 only one forward runs.
- Gradient checkpointing (transformers' per-block checkpointing): every block keeps its input
  (fp32 hidden states); one block's activations exist at a time during recomputation.

The peak: `persistent` (weights, adapters, optimizer states, DDP buckets, CUDA overhead) plus
the larger of (all activations + the logits transient + the LM head's gradient, which is
allocated first in backward) and (the first task's activations + all gradients, the state
after the second task's backward). Sequence lengths are the maxima (the probe step's longest
batch pads to them); `CUDA_OVERHEAD_BYTES` stands for the CUDA context, cuBLAS workspaces and
allocator rounding and fragmentation.

Decoder-only models (`DecoderArchitecture`: Qwen2.5, Llama 3.x, SmolLM2) follow the same
rules over one sequence per task, prompt and completion together (input + output tokens);
what differs is listed at `_decoder_layer_bytes` and `_estimate_decoder`: grouped-query k and
v repeated to every head before attention (transformers' `repeat_kv`, since a padding mask
keeps SDPA off its GQA path), RoPE (q and k re-made, the projections' outputs not saved),
SwiGLU (gate output, SiLU output and up output saved), no dropout in the blocks, one
attention mask per layer for SDPA (converted to the compute dtype), and logits over every
position, prompt included (the causal LM loss is computed over all of them, masked). A tied
head multiplies by the embedding: its weight copy and gradient count, its parameters don't
count twice. QLoRA quantizes every block Linear (no `_keep_in_fp32_modules`).

`flops_per_sample` counts the matmul FLOPs one training sample executes (for MFU): encoder and
decoder separately, attention over the full score matrix (the kernels compute it), backward 2x
the forward for trainable weights and 1x for frozen ones, adapters included, no recomputation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from orchestrator.core.catalog import (
    ALL_LINEAR,
    Architecture,
    DecoderArchitecture,
    T5Architecture,
    architecture,
    target_layers,
)
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import INT64_MAX, Precision

if TYPE_CHECKING:
    from orchestrator.core.grid import GridPoint
    from orchestrator.core.spec import SweepSpec, Training

__all__ = [
    "CUDA_OVERHEAD_BYTES",
    "DEFAULT_MARGIN",
    "CatalogEntry",
    "FitRow",
    "FlopsBreakdown",
    "MemoryEstimate",
    "adapter_parameters",
    "catalog_estimates",
    "estimate_memory",
    "estimate_trial",
    "fit_table",
    "flops_per_sample",
    "forward_flops",
    "nf4_bytes_per_weight",
    "predicted_oom_fn",
    "predicts_oom",
]

Attention = Literal["sdpa", "eager"]

GiB = 2**30
FP32 = 4
MASK = 1  # dropout masks are bool tensors
#: CUDA context (~0.5 GiB with torch on an H100), cuBLAS/cuDNN workspaces, NCCL buffers, and
#: the caching allocator's rounding and fragmentation.
CUDA_OVERHEAD_BYTES = int(1.5 * GiB)
#: `predicts_oom` flags only estimates that clearly exceed the device (the estimate is a model).
DEFAULT_MARGIN = 1.2
NF4_BLOCK = 64  # weights per absmax constant
NF4_DOUBLE_QUANT_BLOCK = 256  # absmax constants per second-level fp32 constant


def nf4_bytes_per_weight(*, double_quant: bool = True) -> float:
    """Bytes per NF4 weight: 4 bits plus the blockwise absmax constants."""
    if double_quant:
        return 0.5 + 1 / NF4_BLOCK + FP32 / (NF4_BLOCK * NF4_DOUBLE_QUANT_BLOCK)
    return 0.5 + FP32 / NF4_BLOCK


TargetModules = str | list[str]


def adapter_parameters(
    arch: Architecture, rank: int, target_modules: TargetModules = ALL_LINEAR
) -> int:
    """LoRA parameters on the block Linears `target_modules` selects: rank x (in + out) each."""
    return sum(rank * (layer.d_in + layer.d_out) * layer.count
               for layer in target_layers(arch, target_modules))


def _wo_parameters(arch: T5Architecture) -> int:
    return (arch.num_layers + arch.num_decoder_layers) * arch.d_ff * arch.d_model


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Predicted peak memory of one worker's device, itemised (bytes)."""

    weights_bytes: int  # unquantized weights (fp32), base and non-quantized parts
    quantized_weights_bytes: int  # NF4 weights with their absmax constants
    adapter_bytes: int  # LoRA weights (fp32)
    gradient_bytes: int  # fp32 gradients of the trainable parameters
    optimizer_bytes: int  # AdamW: 2 fp32 states per trainable parameter
    ddp_bucket_bytes: int  # DDP's flat gradient buckets (data parallel only)
    weight_copy_bytes: int  # bf16 casts of weights autocast keeps for backward
    encoder_activation_bytes: int  # saved for backward, all forwards
    decoder_activation_bytes: int
    logits_bytes: int  # fp32 log-softmax of the logits, saved for the loss's backward
    logits_transient_bytes: int  # logits-sized buffers alive during the loss and its backward
    overhead_bytes: int  # CUDA context and allocator
    total_bytes: int  # the predicted peak (see the module docstring)
    trainable_parameters: int
    total_parameters: int

    @property
    def activation_bytes(self) -> int:
        return self.encoder_activation_bytes + self.decoder_activation_bytes + self.logits_bytes

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GiB

    def breakdown(self) -> dict[str, int]:
        """Every item by name, `total_bytes` included (for JSON and tables)."""
        return {k: v for k, v in asdict(self).items() if k.endswith("_bytes")}


def _attention_bytes_per_score(attention: Attention, act: int) -> int:
    if attention == "sdpa":
        return act  # the additive position bias (+ mask) in the compute dtype
    # fp32 softmax output, dropout mask, dropout output (bf16 cast for the matmul, or fp32)
    return FP32 + MASK + act


def _ffn_bytes(arch: T5Architecture, act: int) -> int:
    """Per token: what the FFN's activation and gating save (not the Linear inputs)."""
    if arch.feed_forward_proj.startswith("gated"):
        # wi_0 out, tanh, 0.5x, 1 + tanh, GELU out, wi_1 out; pow and tanh are fp32 ops
        per = 24 if act == FP32 else 2 + 4 + 2 + 4 + 4 + 2
    else:
        per = 2 * act  # wi output and activation output
    return per * arch.d_ff


def _adapter_bytes(d_in: int, rank: int, act: int) -> int:
    """Per token per adapted Linear: dropout mask, lora_A's (cast) input, lora_A's output."""
    return d_in * (MASK + act) + rank * act


@dataclass(frozen=True, slots=True)
class _Layer:
    """Per-token bytes of one layer, and bytes per score element."""

    per_query_token: int  # scales with the layer's own tokens
    per_key_token: int  # decoder cross-attention: per encoder token (k, v)
    scores_self: int  # bytes per (head, query, key) element, self-attention
    scores_cross: int  # cross-attention (decoder)


def _layer_bytes(
    arch: T5Architecture, method: Method, rank: int, act: int, attention: Attention,
    *, decoder: bool, targets: frozenset[str],
) -> _Layer:
    d, inner = arch.d_model, arch.inner_dim
    full = method is Method.FULL
    gates = 2 if arch.feed_forward_proj.startswith("gated") else 1
    norm = FP32 * d * (2 if full else 1)  # RMSNorm input (+ normalised output if trainable)
    residual_masks = MASK * d

    def linear_inputs(count: int, width: int) -> int:
        """Saved inputs of `count` full-fine-tuned Linears sharing one fp32 input."""
        if not full:
            return 0
        return count * act * width if act != FP32 else FP32 * width

    # attention block (self): norm, q/k/v inputs and outputs, core output (+ o's input copy)
    attn = norm + linear_inputs(3, d) + 3 * act * inner
    attn += act * inner + (act * inner if full else 0) + residual_masks
    if attention == "eager":
        # torch.matmul folds the transposed (batch, heads, tokens, d_kv) views into bmm
        # operands by copying q, k^T and v; its output is not saved (o's input copy is).
        attn += 2 * act * inner
    ffn = norm + linear_inputs(gates, d) + _ffn_bytes(arch, act) + MASK * arch.d_ff
    ffn += (act if act != FP32 else FP32) * arch.d_ff if full else 0  # wo's input
    ffn += residual_masks
    widths = {layer.name: layer.d_in for layer in arch.linear_layers()}

    def adapted(*names: str) -> int:
        """Per token: the adapters on those of `names` that `targets` selects."""
        if not method.uses_adapters:
            return 0
        return sum(_adapter_bytes(widths[n], rank, act) for n in names if n in targets)

    adapters = adapted("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
    scores = _attention_bytes_per_score(attention, act)
    if not decoder:
        return _Layer(attn + ffn + adapters, 0, scores, 0)
    # cross-attention: q from the decoder, k and v from the encoder output (per input token)
    cross_q = norm + linear_inputs(1, d) + act * inner
    cross_q += act * inner + (act * inner if full else 0) + residual_masks
    cross_kv = 2 * act * inner + (2 * act * d if full and act != FP32 else 0)
    if attention == "eager":
        # the q copy for bmm replaces the unsaved matmul output; k^T and v copies per key
        cross_kv += 2 * act * inner
    adapters += adapted("q", "o")
    cross_kv += adapted("k", "v")
    return _Layer(attn + cross_q + ffn + adapters, cross_kv, scores, scores)


def _stack_extra(arch: T5Architecture, full: bool) -> int:
    """Per token, once per stack: embedding dropout mask, final norm and dropout mask."""
    return MASK * arch.d_model + FP32 * arch.d_model * (2 if full else 1) + MASK * arch.d_model


@dataclass(frozen=True, slots=True)
class _Parameters:
    """Bytes that scale with the parameters: weights, their gradients and optimizer state."""

    weights: int  # fp32 weights (all of them, or those QLoRA leaves unquantized)
    quantized: int  # QLoRA's NF4 weights (with their quantization constants)
    adapters: int  # LoRA's A and B, fp32
    gradients: int
    optimizer: int  # AdamW's two moments
    buckets: int  # DDP's gradient buckets, with several data-parallel workers
    trainable: int


def _parameter_bytes(
    arch: T5Architecture, method: Method, rank: int, *, data_parallel: bool, double_quant: bool,
    target_modules: TargetModules,
) -> _Parameters:
    """Step 1 of `estimate_memory`: the parameters and what training keeps per parameter."""
    lora_params = adapter_parameters(arch, rank, target_modules) if method.uses_adapters else 0
    quantized_bytes = 0
    if method is Method.QLORA:
        quantized = arch.linear_params - _wo_parameters(arch)
        weights = FP32 * (arch.parameters - quantized)
        quantized_bytes = math.ceil(quantized * nf4_bytes_per_weight(double_quant=double_quant))
    else:
        weights = FP32 * arch.parameters
    trainable = arch.parameters if method is Method.FULL else lora_params
    return _Parameters(
        weights=weights,
        quantized=quantized_bytes,
        adapters=FP32 * lora_params,
        gradients=FP32 * trainable,
        optimizer=2 * FP32 * trainable,
        buckets=FP32 * trainable if data_parallel else 0,
        trainable=trainable,
    )


def _weight_copy_bytes(
    arch: T5Architecture, method: Method, *, bf16: bool, gradient_checkpointing: bool,
    forwards: int,
) -> int:
    """Step 2: the bf16 weight copies autocast saves for backward (none in fp32)."""
    if not bf16:
        return 0
    head = arch.lm_head_params
    if method is Method.FULL:
        return 2 * (arch.linear_params + head)  # cached once per autocast region
    if gradient_checkpointing:
        return 2 * head * forwards  # block copies live one block at a time
    if method is Method.LORA:
        return 2 * (arch.linear_params + head) * forwards
    return 2 * (_wo_parameters(arch) + head) * forwards


@dataclass(frozen=True, slots=True)
class _Activations:
    """Activation bytes of one forward pass (one DSS task), and the transient logits."""

    encoder: int
    decoder: int
    logits: int  # kept for backward
    logits_transient: int  # the loss's temporaries at the end of the forward pass


def _activation_bytes(
    arch: T5Architecture, method: Method, rank: int, act: int, attention: Attention, *,
    batch: int, input_tokens: int, output_tokens: int, gradient_checkpointing: bool,
    targets: frozenset[str],
) -> _Activations:
    """Step 3: what one forward pass saves for backward, per stack, and the logits."""
    b, li, lo = batch, input_tokens, output_tokens
    full = method is Method.FULL
    enc = _layer_bytes(arch, method, rank, act, attention, decoder=False, targets=targets)
    dec = _layer_bytes(arch, method, rank, act, attention, decoder=True, targets=targets)
    h = arch.num_heads
    enc_layer = b * (li * enc.per_query_token + h * li * li * enc.scores_self)
    dec_layer = b * (
        lo * dec.per_query_token + li * dec.per_key_token
        + h * lo * lo * dec.scores_self + h * lo * li * dec.scores_cross
    )
    enc_stack = b * li * _stack_extra(arch, full) + FP32 * h * li * li  # + position bias
    dec_stack = b * lo * _stack_extra(arch, full) + FP32 * h * lo * lo + act * h * lo * li
    if gradient_checkpointing:
        enc_acts = arch.num_layers * b * li * FP32 * arch.d_model + enc_layer + enc_stack
        dec_acts = arch.num_decoder_layers * b * lo * FP32 * arch.d_model + dec_layer + dec_stack
        dec_acts += b * li * FP32 * arch.d_model  # the encoder output every block reads
    else:
        enc_acts = arch.num_layers * enc_layer + enc_stack
        dec_acts = arch.num_decoder_layers * dec_layer + dec_stack
    head_input = (act * arch.d_model if act != FP32 else FP32 * arch.d_model) if full else 0
    return _Activations(
        encoder=enc_acts,
        decoder=dec_acts,
        logits=b * lo * (FP32 * arch.vocab_size + head_input),
        logits_transient=b * lo * arch.vocab_size * (2 * FP32 + act),
    )


def estimate_memory(
    arch: Architecture,
    method: Method,
    *,
    rank: int | None,
    batch_per_device: int,
    input_tokens: int,
    output_tokens: int,
    precision: Precision,
    dss_two_tasks: bool = True,
    gradient_checkpointing: bool = False,
    attention: Attention = "sdpa",
    data_parallel: bool = False,
    double_quant: bool = True,
    target_modules: TargetModules = ALL_LINEAR,
) -> MemoryEstimate:
    """The predicted peak memory of one worker's device for one training step.

    `batch_per_device` examples, each padded to `input_tokens` in and `output_tokens` out
    (the probe step's worst case). LoRA and QLoRA adapt the block Linears `target_modules`
    (`training.targetModules`) selects; ValueError when it names a layer `arch` lacks. See
    the module docstring for what is counted and why. The steps: the parameters
    (`_parameter_bytes`), the weight copies autocast saves (`_weight_copy_bytes`), the
    activations of each forward pass (`_activation_bytes`), then the larger of the two
    peaks: the end of the last forward pass, or after the second backward pass.
    """
    if batch_per_device < 1 or input_tokens < 1 or output_tokens < 1:
        raise ValueError("batch_per_device, input_tokens and output_tokens must be positive")
    if method.uses_adapters and (rank is None or rank < 1):
        raise ValueError(f"method {method.value} needs a positive LoRA rank")
    if isinstance(arch, DecoderArchitecture):
        return _estimate_decoder(
            arch, method, rank=rank, batch=batch_per_device,
            tokens=input_tokens + output_tokens, precision=precision,
            dss_two_tasks=dss_two_tasks, gradient_checkpointing=gradient_checkpointing,
            attention=attention, data_parallel=data_parallel, double_quant=double_quant,
            target_modules=target_modules,
        )
    r = rank if method.uses_adapters and rank is not None else 0
    bf16 = precision is Precision.BF16
    act = 2 if bf16 else FP32
    forwards = 2 if dss_two_tasks else 1

    params = _parameter_bytes(
        arch, method, r, data_parallel=data_parallel, double_quant=double_quant,
        target_modules=target_modules,
    )
    copies = _weight_copy_bytes(
        arch, method, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
        forwards=forwards,
    )
    one_forward = _activation_bytes(
        arch, method, r, act, attention, batch=batch_per_device, input_tokens=input_tokens,
        output_tokens=output_tokens, gradient_checkpointing=gradient_checkpointing,
        targets=frozenset(layer.name for layer in target_layers(arch, target_modules))
        if method.uses_adapters else frozenset(),
    )
    encoder_total = forwards * one_forward.encoder
    decoder_total = forwards * one_forward.decoder
    logits_total = forwards * one_forward.logits
    activations = encoder_total + decoder_total + logits_total + copies

    # -- the peak: the end of the last forward pass, or after the second backward pass --------
    persistent = (params.weights + params.quantized + params.adapters + params.optimizer
                  + params.buckets + CUDA_OVERHEAD_BYTES)
    head_gradient = FP32 * arch.lm_head_params if method is Method.FULL else 0
    end_of_forward = activations + one_forward.logits_transient + head_gradient
    after_second_backward = (
        (activations - copies) * (forwards - 1) // forwards + params.gradients
    )
    total = persistent + max(end_of_forward, after_second_backward)
    return MemoryEstimate(
        weights_bytes=params.weights,
        quantized_weights_bytes=params.quantized,
        adapter_bytes=params.adapters,
        gradient_bytes=params.gradients,
        optimizer_bytes=params.optimizer,
        ddp_bucket_bytes=params.buckets,
        weight_copy_bytes=copies,
        encoder_activation_bytes=encoder_total,
        decoder_activation_bytes=decoder_total,
        logits_bytes=logits_total,
        logits_transient_bytes=one_forward.logits_transient,
        overhead_bytes=CUDA_OVERHEAD_BYTES,
        total_bytes=int(total),
        trainable_parameters=params.trainable,
        total_parameters=arch.parameters,
    )


def _decoder_layer_bytes(
    arch: DecoderArchitecture, method: Method, rank: int, act: int, attention: Attention,
    target_modules: TargetModules = ALL_LINEAR,
) -> tuple[int, int]:
    """(bytes per token, bytes per (head, query, key) score) saved by one decoder layer.

    Per token: both RMSNorms' fp32 inputs (and normalised outputs when the norm weights
    train); full fine-tuning's Linear inputs (q, k, v and gate, up each cast on their own
    under autocast; o and down take the compute dtype already); q after RoPE, k and v
    repeated to all heads (each the size of q); SDPA's output and log-sum-exp (eager: the
    score-sized softmax output instead, plus its cast to bf16); SwiGLU's gate output, SiLU
    output and up output; every adapter's (on the layers `target_modules` selects) dropout
    mask, cast input and rank-r output.
    """
    d, q, ff = arch.hidden_size, arch.q_dim, arch.intermediate_size
    full = method is Method.FULL
    norm = FP32 * d * (2 if full else 1)

    def linear_inputs(count: int, width: int) -> int:
        if not full:
            return 0
        return count * act * width if act != FP32 else FP32 * width

    attn = norm + linear_inputs(3, d) + 3 * act * q + (act * q if full else 0)  # o's input
    if attention == "sdpa":
        attn += act * q + FP32 * arch.num_heads  # output, log-sum-exp
        scores = 0
    else:
        scores = FP32 + (act if act != FP32 else 0)  # softmax output (+ its cast)
    ffn = norm + linear_inputs(2, d) + 3 * act * ff + (act * ff if full else 0)  # down's input
    adapters = 0
    if method.uses_adapters:
        adapters = sum(
            layer.count * _adapter_bytes(layer.d_in, rank, act)
            for layer in target_layers(arch, target_modules)
        ) // arch.num_layers
    return attn + ffn + adapters, scores


def _estimate_decoder(
    arch: DecoderArchitecture, method: Method, *, rank: int | None, batch: int, tokens: int,
    precision: Precision, dss_two_tasks: bool, gradient_checkpointing: bool,
    attention: Attention, data_parallel: bool, double_quant: bool,
    target_modules: TargetModules,
) -> MemoryEstimate:
    """`estimate_memory` for a decoder-only model; `tokens` = prompt + completion."""
    r = rank if method.uses_adapters and rank is not None else 0
    act = 2 if precision is Precision.BF16 else FP32
    full = method is Method.FULL
    forwards = 2 if dss_two_tasks else 1
    b, seq = batch, tokens
    total_params = arch.parameters
    lora_params = adapter_parameters(arch, r, target_modules) if method.uses_adapters else 0

    quantized_bytes = 0
    if method is Method.QLORA:
        weights = FP32 * (total_params - arch.linear_params)
        quantized_bytes = math.ceil(
            arch.linear_params * nf4_bytes_per_weight(double_quant=double_quant))
    else:
        weights = FP32 * total_params
    trainable = total_params if full else lora_params
    gradients = FP32 * trainable
    optimizer = 2 * FP32 * trainable
    buckets = FP32 * trainable if data_parallel else 0
    adapters = FP32 * lora_params

    head = arch.head_weight_elements  # tied or not, the head multiplies by a V x d weight
    copies = 0
    if precision is Precision.BF16:
        if full:
            copies = 2 * (arch.linear_params + head)
        elif gradient_checkpointing or method is Method.QLORA:
            copies = 2 * head * forwards
        else:
            copies = 2 * (arch.linear_params + head) * forwards

    per_token, per_score = _decoder_layer_bytes(arch, method, r, act, attention, target_modules)
    layer = b * (seq * per_token + arch.num_heads * seq * seq * per_score)
    if attention == "sdpa":
        layer += b * seq * seq * act  # the padding mask, in the compute dtype, per call
    # Once per forward: the final norm, RoPE's cos and sin (fp32, shared by every layer).
    stack = b * seq * (FP32 * arch.hidden_size * (2 if full else 1) + 2 * FP32 * arch.dim_per_head)
    if gradient_checkpointing:
        acts = arch.num_layers * b * seq * FP32 * arch.hidden_size + layer + stack
    else:
        acts = arch.num_layers * layer + stack
    head_input = (act if act != FP32 else FP32) * arch.hidden_size if full else 0
    logits = b * seq * (FP32 * arch.vocab_size + head_input)
    logits_transient = b * seq * arch.vocab_size * (2 * FP32 + act)

    decoder_total = forwards * acts
    logits_total = forwards * logits
    activations = decoder_total + logits_total + copies
    persistent = weights + quantized_bytes + adapters + optimizer + buckets + CUDA_OVERHEAD_BYTES
    head_gradient = FP32 * head if full else 0
    end_of_forward = activations + logits_transient + head_gradient
    after_second_backward = (activations - copies) * (forwards - 1) // forwards + gradients
    total = persistent + max(end_of_forward, after_second_backward)
    return MemoryEstimate(
        weights_bytes=weights,
        quantized_weights_bytes=quantized_bytes,
        adapter_bytes=adapters,
        gradient_bytes=gradients,
        optimizer_bytes=optimizer,
        ddp_bucket_bytes=buckets,
        weight_copy_bytes=copies,
        encoder_activation_bytes=0,
        decoder_activation_bytes=decoder_total,
        logits_bytes=logits_total,
        logits_transient_bytes=logits_transient,
        overhead_bytes=CUDA_OVERHEAD_BYTES,
        total_bytes=int(total),
        trainable_parameters=trainable,
        total_parameters=total_params,
    )


def predicts_oom(
    estimate: MemoryEstimate, device_bytes: int, margin: float = DEFAULT_MARGIN
) -> bool:
    """Whether the estimate clearly exceeds the device: more than `margin` x its memory.

    A trial between the device and the margin is launched; its probe step gives the verdict.
    """
    return estimate.total_bytes > margin * device_bytes


# --- the helper the runner and the controller use ----------------------------------------


def estimate_trial(spec: SweepSpec, trial: GridPoint) -> MemoryEstimate | None:
    """The estimate of one trial of a sweep, or None for a model without a known architecture.

    Batch per device: the examples of one forward/backward pass on a worker (its share of
    batchSize, or microBatchSize when gradients are accumulated over smaller passes); sequence
    lengths: the training maxima; two DSS forwards unless the lane's DSS loss weight is 1.
    """
    arch = architecture(trial.model)
    if arch is None:
        return None
    training = trial.lane.training(spec.training)
    workers = trial.resources.workers
    return estimate_memory(
        arch,
        trial.lane.method,
        rank=trial.lane.rank,
        batch_per_device=training.pass_batch(workers),
        input_tokens=training.max_input_tokens,
        output_tokens=training.max_output_tokens,
        precision=training.precision,
        dss_two_tasks=trial.lane.dss_alpha != 1.0,
        gradient_checkpointing=training.gradient_checkpointing,
        data_parallel=workers > 1,
        double_quant=training.qlora_double_quant,
        attention=training.attention.value,
        target_modules=training.target_modules,
    )


def estimated_bytes(spec: SweepSpec, trial: GridPoint) -> int | None:
    """Peak bytes per device the estimator expects of a trial, stored with every attempt so
    that reports can set it against the measured peak."""
    estimate = estimate_trial(spec, trial)
    # Stored as a BIGINT: an estimate past int64 (a spec of 2**31 tokens) is "more than any
    # device", and says so at the column's ceiling.
    return None if estimate is None else min(int(estimate.total_bytes), INT64_MAX)


def predicted_oom_fn(
    spec: SweepSpec, *, margin: float = DEFAULT_MARGIN
) -> Callable[[GridPoint], bool] | None:
    """`trial -> predicted to run out of memory`, for `Observed.predicted_oom`.

    None when `escalation.predictOOM` is false or `escalation.deviceMemory` is unknown. The
    device is `deviceMemory`, or `memoryBudget` where that is smaller (it caps the device).
    Trials of models without a known architecture are never predicted. Results are memoised
    per trial id (the runner asks on every pass).
    """
    escalation = spec.escalation
    device = escalation.device_memory_bytes
    if not escalation.predict_oom or device is None:
        return None
    budget = escalation.memory_budget_bytes
    if budget is not None:
        device = min(device, budget)
    cache: dict[str, bool] = {}

    def predicted(trial: GridPoint) -> bool:
        known = cache.get(trial.trial_id)
        if known is None:
            estimate = estimate_trial(spec, trial)
            known = estimate is not None and predicts_oom(estimate, device, margin)
            cache[trial.trial_id] = known
        return known

    return predicted


# --- the catalogue and the ladder at a spec's settings (`ladder models`, `ladder plan`) ------


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One known architecture with its peak-memory estimate per method."""

    name: str
    family: str
    parameters: int
    tied_embeddings: bool
    estimates: dict[Method, MemoryEstimate]


def catalog_estimates(
    training: Training, *, workers: int, rank: int, dss_two_tasks: bool
) -> list[CatalogEntry]:
    """Every architecture of the catalogue, estimated with `training`'s lengths, precision,
    checkpointing, LoRA targets and per-worker batch (`workers` data-parallel workers), LoRA
    rank `rank`. An architecture that `training.targetModules` names no layer of (`gate` in
    T5) has no LoRA and QLoRA estimates."""
    from orchestrator.core.catalog import ARCHITECTURES

    entries = []
    for name, arch in ARCHITECTURES.items():
        try:
            target_layers(arch, training.target_modules)
            methods = list(Method)
        except ValueError:
            methods = [m for m in Method if not m.uses_adapters]
        estimates = {
            method: estimate_memory(
                arch, method, rank=rank if method.uses_adapters else None,
                batch_per_device=training.pass_batch(workers),
                input_tokens=training.max_input_tokens, output_tokens=training.max_output_tokens,
                precision=training.precision, dss_two_tasks=dss_two_tasks,
                gradient_checkpointing=training.gradient_checkpointing,
                data_parallel=workers > 1, double_quant=training.qlora_double_quant,
                target_modules=training.target_modules,
            )
            for method in methods
        }
        tied = arch.tie_word_embeddings if isinstance(arch, DecoderArchitecture) else False
        entries.append(CatalogEntry(name, arch.family, arch.parameters, tied, estimates))
    return entries


@dataclass(frozen=True, slots=True)
class FitRow:
    """A model of the ladder under one method (its first lane): the estimate per device and
    whether the estimator predicts an OOM (None: no device memory known, or no estimate)."""

    model: str
    method: Method
    estimate: MemoryEstimate | None
    predicted_oom: bool | None


def fit_table(spec: SweepSpec, trials_by_method: dict[Method, list[GridPoint]]) -> list[FitRow]:
    """Which rungs of the ladder the estimator expects to fit, per method: `trials_by_method`
    holds one lane's trials per method (the grid's first lane of it)."""
    predicted = predicted_oom_fn(spec)
    rows = []
    for method, trials in trials_by_method.items():
        for trial in trials:
            estimate = estimate_trial(spec, trial)
            oom = None if predicted is None or estimate is None else predicted(trial)
            rows.append(FitRow(trial.model, method, estimate, oom))
    return rows


# --- FLOPs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlopsBreakdown:
    """Forward matmul FLOPs of one sequence pair, by part."""

    encoder_linear: float
    encoder_attention: float
    decoder_linear: float  # cross-attention k and v over the encoder tokens included
    decoder_attention: float  # self (full square) and cross
    lm_head: float

    @property
    def encoder(self) -> float:
        return self.encoder_linear + self.encoder_attention

    @property
    def decoder(self) -> float:
        return self.decoder_linear + self.decoder_attention

    @property
    def total(self) -> float:
        return self.encoder + self.decoder + self.lm_head


def forward_flops(arch: Architecture, input_tokens: int, output_tokens: int) -> FlopsBreakdown:
    """Forward FLOPs (2 per multiply-add) of one example of one task (decoder-only: one
    sequence of input + output tokens, all of it under `decoder_*`)."""
    if isinstance(arch, DecoderArchitecture):
        seq = input_tokens + output_tokens
        return FlopsBreakdown(
            0.0, 0.0, 2.0 * seq * arch.linear_params,
            4.0 * seq * seq * arch.q_dim * arch.num_layers,
            2.0 * seq * arch.hidden_size * arch.vocab_size,
        )
    d, inner, li, lo = arch.d_model, arch.inner_dim, input_tokens, output_tokens
    enc_linear = 2.0 * li * (arch.attention_params + arch.ffn_params) * arch.num_layers
    enc_attention = 4.0 * li * li * inner * arch.num_layers  # QK^T and AV
    per_dec_token = 2 * arch.attention_params - 2 * d * inner + arch.ffn_params  # cross q, o
    dec_linear = (2.0 * lo * per_dec_token + 2.0 * li * 2 * d * inner) * arch.num_decoder_layers
    dec_attention = (4.0 * lo * lo * inner + 4.0 * lo * li * inner) * arch.num_decoder_layers
    lm_head = 2.0 * lo * d * arch.vocab_size
    return FlopsBreakdown(enc_linear, enc_attention, dec_linear, dec_attention, lm_head)


def _adapter_forward_flops(
    arch: Architecture, rank: int, input_tokens: int, output_tokens: int,
    target_modules: TargetModules = ALL_LINEAR,
) -> float:
    layers = target_layers(arch, target_modules)
    if isinstance(arch, DecoderArchitecture):
        per_token = sum((layer.d_in + layer.d_out) * layer.count for layer in layers)
        return 2.0 * rank * (input_tokens + output_tokens) * per_token
    width = {layer.name: layer.d_in + layer.d_out for layer in layers}  # in + out, per token

    def of(*names: str) -> int:
        return sum(width.get(name, 0) for name in names)

    per_layer = of("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
    enc = input_tokens * per_layer * arch.num_layers
    # decoder: self-attention and FFN, cross-attention's q and o per output token, its k and
    # v over the encoder output (input tokens)
    dec = output_tokens * (per_layer + of("q", "o")) + input_tokens * of("k", "v")
    return 2.0 * rank * (enc + dec * arch.num_decoder_layers)


def flops_per_sample(
    arch: Architecture,
    method: Method,
    input_tokens: int,
    output_tokens: int,
    *,
    rank: int | None = None,
    dss_two_tasks: bool = True,
    target_modules: TargetModules = ALL_LINEAR,
) -> float:
    """Training FLOPs of one DSS sample (both tasks unless `dss_two_tasks` is False).

    Backward: 2x the forward for trainable weights (input and weight gradients), 1x for frozen
    ones (input gradient only), 2x for attention's matmuls; adapters (on the layers
    `target_modules` selects) 3x their forward.
    """
    fwd = forward_flops(arch, input_tokens, output_tokens)
    linear = fwd.encoder_linear + fwd.decoder_linear + fwd.lm_head
    attention = fwd.encoder_attention + fwd.decoder_attention
    if method is Method.FULL:
        per_task = 3.0 * (linear + attention)
    else:
        adapter = _adapter_forward_flops(
            arch, rank or 0, input_tokens, output_tokens, target_modules)
        per_task = 2.0 * linear + 3.0 * attention + 3.0 * adapter
    return per_task * (2 if dss_two_tasks else 1)
