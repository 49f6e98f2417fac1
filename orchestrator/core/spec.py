"""The Sweep spec: one pydantic model, used as a YAML file locally and as the CR's `spec`.

The CRD's openAPIV3Schema is generated from these models (`orchestrator.crd`), so the file a
user writes and the object the apiserver stores never drift. Field names are camelCase on the
wire (Kubernetes convention) and snake_case in Python. Defaults are the paper's recipe
(docs/paper.md). Every model forbids unknown fields, so a typo is an error that names the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from orchestrator.core.catalog import architecture, target_layers
from orchestrator.core.lifecycle import Method
from orchestrator.core.manifest_yaml import (
    MAX_DEPTH,
    ManifestError,
    load_documents,
)

API_VERSION = "ladder.dev/v1alpha1"
KIND = "Sweep"

# A sweep's name ends up in RayJob names (`<sweep>-<trial id>-<attempt>`) and label values,
# both capped at 63 characters by Kubernetes; 40 leaves room for the suffix.
MAX_SWEEP_NAME = 40
# Lists are bounded so the CRD's CEL rules have a bounded cost.
MAX_LIST = 32
# Free-text strings are bounded: a model id or path, a dataset source, a tokenizer.
MAX_TEXT = 256
MAX_SOURCE = 1024
# Names are matched whole (`fullmatch`, and `$` in the CRD's RE2 is the end of the text), so a
# trailing newline is refused as the apiserver refuses it.
SWEEP_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAMESPACE = 63
# Exactly the suffixes `parse_quantity` knows (no milli-bytes), so the CRD's pattern, which is
# this regex, accepts what the model accepts and nothing else. The number must have a non-zero
# digit: a budget of zero bytes is no budget (fractions round up to whole bytes).
QUANTITY_RE = re.compile(
    r"^((?:[0-9]*[1-9][0-9]*(?:\.[0-9]+)?)|(?:[0-9]+\.[0-9]*[1-9][0-9]*))"
    r"(Ki|Mi|Gi|Ti|Pi|Ei|[kKMGTPE])?$"
)
# The ceiling of `maxTrials` (and so of a grid): the controller expands the grid of every
# Sweep; at this size `expand` and `plan` take seconds and tens of MB (docs/benchmarks.md,
# section 6).
MAX_TRIALS = 100_000
# Integer bounds of what stores and runs a value: the store's INTEGER columns (rank, alpha,
# attempt, epoch) and Kubernetes' int32 fields (replicas) take int32; seeds are stored as
# BIGINT and passed to torch.manual_seed (int64 plus the rank stays in its range).
INT32_MAX = 2**31 - 1
#: The most examples a builtin generator makes (`dataset.size`, `ladder dataset -n`): each is
#: about 3 KiB held in memory by every trial, so a million is about 3 GiB per worker.
MAX_BUILTIN_EXAMPLES = 1_000_000
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# PostgreSQL cannot store NUL in text or JSONB; the CRD refuses it in the model's strings.
NO_NUL_PATTERN = "^[^\\x00]*$"
# Sources of this form name a generated dataset: the worker's `worker.data.builtin.BUILTINS`
# (a test ties the two lists; the core does not import the worker).
BUILTIN_PREFIX = "builtin:"
BUILTIN_DATASETS = ("querydsl",)
_QUANTITY_FACTORS = {
    None: 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_quantity(text: str | int) -> int:
    """A Kubernetes memory quantity ("24Gi", "512Mi", "2G", "1048576") in whole bytes, at
    least one (fractions round up, as Kubernetes rounds them)."""
    if isinstance(text, int):
        return text
    match = QUANTITY_RE.fullmatch(text)
    if match is None or match.group(2) not in _QUANTITY_FACTORS:
        raise ValueError(
            f"{text!r} is not a memory quantity of at least one byte such as '24Gi', '512Mi' "
            "or '2G'"
        )
    exact = Decimal(match.group(1)) * _QUANTITY_FACTORS[match.group(2)]
    return int(exact.to_integral_value(rounding="ROUND_CEILING"))


class FieldError(ValueError):
    """A whole-model rule that is about one field: `parse_sweep` reports it at `field`
    (a camelCase path relative to the model that raised it), as the CRD's CEL rules do."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )


class Precision(StrEnum):
    """Training precision. T5 overflows in fp16, so fp16 is refused (see `Training`)."""

    BF16 = "bf16"
    FP32 = "fp32"


class SelectionLoss(StrEnum):
    """Which evaluation loss picks the best epoch and drives the LR plateau."""

    LABEL = "label"  # the authors': they evaluate with output_rationale=False (label loss only)
    RATIONALE = "rationale"  # the `explain:` task's loss alone
    DSS = "dss"  # a * label + (1 - a) * rationale, the training objective


class InputTruncation(StrEnum):
    """Which part of an over-long input is kept (the task prefix is always kept)."""

    KEEP_END = "keep-end"  # Ladder's: the question comes last in the prompt
    KEEP_START = "keep-start"  # the authors' (tokenizer default, truncation side right)


class Attention(StrEnum):
    """The attention kernel of the model (transformers' `attn_implementation`)."""

    SDPA = "sdpa"  # transformers 5's default for T5 (torch's scaled_dot_product_attention)
    EAGER = "eager"  # the authors' (transformers 4.45's T5 had eager attention only)


class LossReduction(StrEnum):
    """How a batch's per-token losses become one loss (for each DSS task)."""

    TOKEN_MEAN = "token-mean"  # Ladder's: the mean over every target token of the batch
    EXAMPLE_MEAN = "example-mean"  # each example's token mean, then the mean over examples


class WeightDtype(StrEnum):
    """The dtype of QLoRA's frozen weights that are not quantized (norms, embeddings, head)."""

    FP32 = "fp32"  # Ladder's: peft's prepare_model_for_kbit_training upcasts them
    BF16 = "bf16"
    FP16 = "fp16"  # the authors': transformers 4.45 loads them in fp16 with a quantization config


class ModelInit(StrEnum):
    """`pretrained` loads weights (local path or hub); `random` builds the architecture only."""

    PRETRAINED = "pretrained"
    RANDOM = "random"


class OnOOM(StrEnum):
    """What an OOM does to its lane."""

    STOP_LANE = "stop-lane"  # the paper's procedure: the lane's ceiling is found
    CONTINUE = "continue"  # try every model anyway (e.g. to map which ones fit)


class Preamble(StrEnum):
    """How long the built-in dataset's instruction preamble is."""

    FULL = "full"  # the paper's shape: long instructions and an index description
    SHORT = "short"  # a few lines, for quick CPU runs


class SaveModel(StrEnum):
    """Which trained weights a trial keeps in `<trial output>/model` when it ends."""

    NONE = "none"  # measure only: the paper wrote a full checkpoint every epoch and used none
    BEST = "best"  # the epoch with the lowest eval loss, rewritten each time it improves
    FINAL = "final"  # the weights after the last epoch, written once
    # The authors' save_strategy="epoch": weights and optimizer state after every epoch,
    # rewritten in place (the cost the paper's times include).
    EVERY_EPOCH = "every-epoch"

    def saves_after(self, epoch: int, epochs: int, best_epoch: int | None) -> bool:
        """Whether the weights as they stand after `epoch` (of `epochs`) are to be written."""
        if self is SaveModel.BEST:
            return best_epoch == epoch
        if self is SaveModel.EVERY_EPOCH:
            return True
        return self is SaveModel.FINAL and epoch == epochs


PositiveInt = Annotated[int, Field(gt=0, le=INT32_MAX)]


def _int64(value: int) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{value} is beyond a 64-bit integer")
    return value


# A validator, not `Field(ge=, le=)`: the apiserver refuses a CRD whose bounds are +-2**63
# (they do not survive its float64 reading), and an `integer` there is an int64 already.
Seed = Annotated[int, AfterValidator(_int64)]


class AdapterSet(_Model):
    """One LoRA rank with the alphas to try at that rank."""

    rank: PositiveInt
    alphas: list[PositiveInt] = Field(min_length=1, max_length=MAX_LIST)

    @field_validator("alphas")
    @classmethod
    def _unique_alphas(cls, alphas: list[int]) -> list[int]:
        if len(set(alphas)) != len(alphas):
            raise ValueError(f"alphas must not repeat, got {alphas}")
        return alphas


class LRPlateau(_Model):
    """ReduceLROnPlateau on the evaluation loss."""

    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(10, ge=0, le=INT32_MAX)


class EarlyStopping(_Model):
    """Stop a trial once the selected eval loss has not improved for `patience` epochs.

    An epoch improves when its loss is below the best so far by more than `minDelta`. Off
    unless set: the paper's recipe trains every epoch (core/stopping.py decides)."""

    patience: int = Field(ge=1, le=INT32_MAX)
    min_delta: float = Field(0.0, ge=0)
def _refuse_fp16_precision(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("fp16", "float16", "half"):
        raise ValueError("fp16 is not supported for T5 (it overflows); use bf16 or fp32")
    return value


class QLoRAOverrides(_Model):
    """Fields of `training` that QLoRA lanes take instead of the sweep's (the authors trained
    QLoRA with bf16 autocast and 4 accumulation steps, full and LoRA in fp32 without)."""

    precision: Precision | None = None
    gradient_accumulation_steps: int | None = Field(None, ge=1, le=INT32_MAX)

    @field_validator("precision", mode="before")
    @classmethod
    def _refuse_fp16(cls, value: Any) -> Any:
        return _refuse_fp16_precision(value)

    def as_overrides(self) -> tuple[tuple[str, Any], ...]:
        """(Training field, value) of each override that is set."""
        return tuple((name, value) for name in type(self).model_fields
                     if (value := getattr(self, name)) is not None)


class Training(_Model):
    """The recipe of every trial. Defaults are the paper's (docs/paper.md, "Training recipe")."""

    epochs: int = Field(100, ge=1, le=INT32_MAX)
    learning_rate: float = Field(5.0e-5, gt=0)
    batch_size: int = Field(
        8, ge=1, le=INT32_MAX,
        description="Total batch per optimizer step, all workers (times "
        "gradientAccumulationSteps when that is more than 1).",
    )
    lr_plateau: LRPlateau = LRPlateau()
    selection_loss: SelectionLoss = Field(
        SelectionLoss.LABEL,
        description="The evaluation loss that picks the best epoch and drives the LR plateau: "
        "label (the authors' metric, comparable across dssAlpha), rationale or dss "
        "(a * label + (1 - a) * rationale). All three are recorded every epoch.",
    )
    early_stopping: EarlyStopping | None = Field(
        None,
        description="Stop once the selected eval loss (selectionLoss) has not improved by more "
        "than minDelta for patience epochs. Unset (the paper's recipe): every epoch runs.",
    )
    precision: Precision = Precision.BF16
    tf32: bool = Field(True, description="Allow TF32 matmuls on Ampere+ GPUs.")
    target_modules: (
        Annotated[str, Field(max_length=MAX_TEXT)]
        | Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]],
            Field(max_length=MAX_LIST),
        ]
    ) = Field(
        "all-linear",
        description="LoRA/QLoRA: the block Linear layers that get adapters: all-linear (every "
        "one, the LM head excluded) or a list; decoder-only models: q, k, v, o, gate, up, down "
        "(or q_proj, ...); T5: q, k, v, o, wi_0, wi_1, wo.",
    )
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    max_input_tokens: int = Field(1400, ge=8, le=INT32_MAX)
    max_output_tokens: int = Field(1024, ge=8, le=INT32_MAX)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(
        None, gt=0,
        description="Clip the gradients' total L2 norm to this before each optimizer step "
        "(the authors' HF Trainer: 1.0). Unset: no clipping.",
    )
    input_truncation: InputTruncation = Field(
        InputTruncation.KEEP_END,
        description="What an input longer than maxInputTokens keeps: keep-end (the question, "
        "which comes last) or keep-start (the authors' tokenizer default). Targets always "
        "keep their start.",
    )
    attention: Attention = Field(
        Attention.SDPA,
        description="Attention implementation: sdpa (transformers 5's default) or eager (the "
        "authors': transformers 4.45's T5 had no other).",
    )
    loss_reduction: LossReduction = Field(
        LossReduction.TOKEN_MEAN,
        description="Each task's loss over a worker's batch: token-mean (every target token "
        "weighs the same) or example-mean (the mean of each example's token mean). Equal at "
        "one example per worker, the authors' setup.",
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=INT32_MAX,
        description="Batches per optimizer step, as the HF Trainer's: each worker runs this "
        "many batches of its share of batchSize and averages their losses (each weighs "
        "1/steps), so a step sees batchSize x steps examples. The authors' QLoRA: 4.",
    )
    qlora_weight_dtype: WeightDtype = Field(
        WeightDtype.FP32,
        description="QLoRA: the dtype of the frozen weights that are not quantized (norms, "
        "embeddings, LM head; T5's `wo` stays fp32): fp32 (peft's upcast), bf16 or fp16 "
        "(the authors').",
    )
    qlora_overrides: QLoRAOverrides | None = Field(
        None,
        description="Training fields QLoRA lanes take instead of these (precision, "
        "gradientAccumulationSteps): the authors ran QLoRA in bf16 with 4 accumulation steps "
        "and full and LoRA in fp32 without.",
    )
    init: ModelInit = ModelInit.PRETRAINED
    tokenizer: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_TEXT,
        json_schema_extra={"pattern": NO_NUL_PATTERN},
        description="Tokenizer path or id; default: the model's own, 'byte' for random init.",
    )
    gradient_checkpointing: bool = False
    chat_template: bool = Field(
        False,
        description="Decoder-only models: wrap each prompt in the tokenizer's chat template "
        "(a user turn, then the assistant's), where it has one; otherwise prompt and "
        "completion are joined by a newline.",
    )
    micro_batch_size: int | None = Field(
        None, ge=1, le=INT32_MAX,
        description="Examples per forward/backward pass on a worker: its share of batchSize "
        "is split into passes of this size whose gradients add up before one optimizer step "
        "(the same total batch with the memory of the smaller pass). Unset: one pass.",
    )
    generate_every: int = Field(
        0, ge=0, le=INT32_MAX,
        description="Greedy-generation metrics every k epochs; 0: only after the last.",
    )
    generate_limit: int | None = Field(
        None, ge=1, le=INT32_MAX,
        description="Evaluate generation on at most this many eval examples.",
    )
    save_model: SaveModel = Field(
        SaveModel.NONE,
        description="Keep the trained weights in the trial's output directory (adapters only "
        "for LoRA and QLoRA, with the tokenizer): none, best (lowest eval loss), final, or "
        "every-epoch (the authors' save_strategy: weights and optimizer state after every "
        "epoch, rewritten in place).",
    )
    qlora_double_quant: bool = Field(
        True,
        description="QLoRA: quantize the NF4 blocks' absmax constants again (8-bit, one fp32 "
        "per 256 blocks), as the QLoRA authors' code does; one setting for pretrained and "
        "random-init models and for the memory estimate.",
    )
    baseline: bool = Field(
        True,
        description="Before training, evaluate the untuned model (eval losses and the "
        "generation metrics) and store it as epoch 0: each trial's gain over its own baseline. "
        "Costs one evaluation and one generation pass; false skips it.",
    )

    def per_worker_batch(self, workers: int) -> int:
        """Examples each worker takes per optimizer step: batchSize // workers, at least one
        (the paper: 8 = 1 x 8 GPUs)."""
        return max(1, self.batch_size // max(1, workers))

    def pass_batch(self, workers: int) -> int:
        """Examples in one forward/backward pass on a worker (what sets activation memory)."""
        share = self.per_worker_batch(workers)
        return min(share, self.micro_batch_size) if self.micro_batch_size else share

    def accumulation_steps(self, workers: int) -> int:
        """Forward/backward passes per optimizer step on a worker."""
        return -(-self.per_worker_batch(workers) // self.pass_batch(workers))

    @field_validator("precision", mode="before")
    @classmethod
    def _refuse_fp16(cls, value: Any) -> Any:
        return _refuse_fp16_precision(value)

    @field_validator("target_modules")
    @classmethod
    def _target_modules_non_empty(cls, value: str | list[str]) -> str | list[str]:
        if not value:
            raise ValueError("targetModules must name at least one module, or 'all-linear'")
        return value

    @field_validator("target_modules", mode="wrap")
    @classmethod
    def _target_modules_one_problem(
        cls, value: Any, handler: ValidatorFunctionWrapHandler
    ) -> str | list[str]:
        """One problem for a bad value, read as what the user wrote (a name or a list of
        names), not one per member of the union."""
        try:
            return handler(value)
        except ValidationError as error:
            if not isinstance(value, str | list):
                kind = {dict: "a mapping", bool: "a boolean", type(None): "null"}.get(
                    type(value), "a number")
                raise ValueError("must be 'all-linear', a layer name or a list of names, not "
                                 f"{kind}") from None
            # pydantic tags each error with the member it tried: list[...] or constrained-str
            errors = [e for e in error.errors() if isinstance(value, list) == any(
                str(part).startswith("list[") for part in e["loc"])]
            errors = errors or error.errors()
            message = errors[0]["msg"].removeprefix("Value error, ")
            index = [part for part in errors[0]["loc"] if isinstance(part, int)]
            if index:
                message = f"item {index[0]}: {message}"
            if len(errors) > 1:
                message += f" (and {len(errors) - 1} more)"
            raise ValueError(message) from None


class Dataset(_Model):
    """Where the DSS examples come from and how they are split."""

    source: str = Field(
        "builtin:querydsl", min_length=1, max_length=MAX_SOURCE,
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: Seed = 0
    size: int | None = Field(
        None, ge=2, le=MAX_BUILTIN_EXAMPLES,
        description="Examples from a builtin generator (at most 1,000,000: about 3 GiB of "
                    "host memory; larger data sets come from a file)."
    )
    preamble: Preamble = Preamble.FULL
    labels_must_be_json: bool = True

    @field_validator("source")
    @classmethod
    def _known_builtin(cls, source: str) -> str:
        if source.startswith(BUILTIN_PREFIX) and \
                source.removeprefix(BUILTIN_PREFIX) not in BUILTIN_DATASETS:
            known = ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_DATASETS)
            raise ValueError(f"unknown built-in dataset {source!r} (known: {known})")
        return source


class ResourceOverride(_Model):
    """Per-model resources; unset fields keep the sweep's defaults."""

    workers: int | None = Field(None, ge=1, le=INT32_MAX)
    gpus_per_worker: int | None = Field(None, ge=0, le=INT32_MAX)
    cpus_per_worker: int | None = Field(None, ge=1, le=INT32_MAX)


class Resources(_Model):
    """Ray Train workers per trial; `overrides` keyed by model id."""

    workers: int = Field(8, ge=1, le=INT32_MAX)
    gpus_per_worker: int = Field(1, ge=0, le=INT32_MAX)
    cpus_per_worker: int = Field(1, ge=1, le=INT32_MAX)
    overrides: dict[str, ResourceOverride] = Field(default_factory=dict)

    def for_model(self, model: str) -> ResourceShape:
        override = self.overrides.get(model, ResourceOverride())
        return ResourceShape(
            workers=override.workers or self.workers,
            gpus_per_worker=(
                self.gpus_per_worker if override.gpus_per_worker is None
                else override.gpus_per_worker
            ),
            cpus_per_worker=override.cpus_per_worker or self.cpus_per_worker,
        )


def workers_sharing_gpus(resources: Resources) -> list[tuple[str, str]]:
    """(field, why) for each shape with gpusPerWorker > 1 and two or more workers, where the
    workers share one Ray node (the local runtime: `ladder run` refuses them). A worker trains
    on one GPU (DDP, no model parallelism); workers sharing a node see the union of their
    GPUs, and Accelerate builds DDP on GPU LOCAL_RANK while the model sits on Ray's device: a
    device mismatch at the first step. On Kubernetes each such worker has a pod (a Ray node)
    of its own (`operator.manifests.workers_per_pod` never packs them), so they are allowed."""
    shapes = [("spec.resources.gpusPerWorker", resources.workers, resources.gpus_per_worker)]
    shapes += [
        (f"spec.resources.overrides.{model}.gpusPerWorker", shape.workers,
         shape.gpus_per_worker)
        for model in resources.overrides
        for shape in [resources.for_model(model)]
    ]
    return [
        (field, f"{gpus} GPUs per worker with {workers} workers on one node: each worker "
                f"trains on one GPU, and workers sharing a node would build DDP on the wrong "
                f"device; use gpusPerWorker: 1 with {workers * gpus} workers, or workers: 1")
        for field, workers, gpus in shapes if gpus > 1 and workers > 1
    ]


class ResourceShape(_Model):
    """The resources one trial needs: `workers` Ray Train workers of this size."""

    workers: int = Field(ge=1)
    gpus_per_worker: int = Field(ge=0)
    cpus_per_worker: int = Field(ge=1)

    @property
    def gpus(self) -> int:
        return self.workers * self.gpus_per_worker

    @property
    def cpus(self) -> int:
        return self.workers * self.cpus_per_worker


class Escalation(_Model):
    """How a lane climbs the ladder."""

    on_oom: OnOOM = Field(OnOOM.STOP_LANE, alias="onOOM")
    retries: int = Field(
        1, ge=0, le=INT32_MAX - 1, description="Retries of a trial after a non-OOM failure."
    )
    memory_budget: str | None = Field(
        None,
        description="Memory cap per device, e.g. '24Gi' (GPU allocator or CPU peak).",
        json_schema_extra={"pattern": QUANTITY_RE.pattern},
    )
    predict_oom: bool = Field(
        True,
        alias="predictOOM",
        description="Skip trials whose memory estimate exceeds the device.",
    )
    device_memory: str | None = Field(
        None,
        description="Device memory the estimate is checked against, e.g. '80Gi'.",
        json_schema_extra={"pattern": QUANTITY_RE.pattern},
    )

    @field_validator("memory_budget", "device_memory")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and parse_quantity(value) > INT64_MAX:
            raise ValueError(f"{value!r} is more than {INT64_MAX} bytes")
        return value

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget is None else parse_quantity(self.memory_budget)

    @property
    def device_memory_bytes(self) -> int | None:
        return None if self.device_memory is None else parse_quantity(self.device_memory)


class Axes(_Model):
    """Further axes of the grid; the Cartesian product of all of them makes the lanes."""

    dss_alpha: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.5], min_length=1, max_length=MAX_LIST
    )
    seed: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=MAX_LIST)
    learning_rate: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, min_length=1, max_length=MAX_LIST
    )
    batch_size: list[PositiveInt] | None = Field(
        None, min_length=1, max_length=MAX_LIST
    )
    lora_dropout: list[Annotated[float, Field(ge=0, lt=1)]] | None = Field(
        None, min_length=1, max_length=MAX_LIST
    )

    @model_validator(mode="after")
    def _unique_values(self) -> Axes:
        for name in type(self).model_fields:
            values = getattr(self, name)
            if values is not None and len(set(values)) != len(values):
                raise FieldError(
                    to_camel(name), f"axis {to_camel(name)} repeats a value: {values}"
                )
        return self


PAPER_ADAPTERS = (
    AdapterSet(rank=32, alphas=[32, 64, 128]),
    AdapterSet(rank=64, alphas=[32, 64, 128, 256]),
    AdapterSet(rank=128, alphas=[32, 64, 128, 256, 512]),
)
PAPER_LADDER = (
    "google/flan-t5-small",
    "google/flan-t5-base",
    "google/flan-t5-large",
    "google/flan-t5-xl",
)


class SweepSpec(_Model):
    """The whole Sweep: what to train (the grid), how, and where."""

    ladder: list[Annotated[str, Field(
        min_length=1, max_length=MAX_TEXT, json_schema_extra={"pattern": NO_NUL_PATTERN}
    )]] = Field(
        min_length=1, max_length=MAX_LIST
    )
    methods: list[Method] = Field(
        default_factory=lambda: [Method.FULL, Method.LORA, Method.QLORA], min_length=1,
        max_length=len(Method),
    )
    adapters: list[AdapterSet] = Field(
        default_factory=lambda: list(PAPER_ADAPTERS), max_length=MAX_LIST
    )
    axes: Axes = Axes()
    training: Training = Training()
    dataset: Dataset = Dataset()
    resources: Resources = Resources()
    escalation: Escalation = Escalation()
    parallelism: int = Field(1, ge=1, le=INT32_MAX, description="Trials at once.")
    max_trials: int = Field(
        1000, ge=1, le=MAX_TRIALS,
        description=f"Refuse grids with more potential trials (at most {MAX_TRIALS}).",
    )
    suspend: bool = False
    execution: dict[str, Any] = Field(
        default_factory=dict, description="Backend specifics: image, RayCluster template, selector."
    )

    @field_validator("ladder")
    @classmethod
    def _unique_models(cls, ladder: list[str]) -> list[str]:
        seen: set[str] = set()
        for model in ladder:
            if model in seen:
                raise ValueError(f"model {model!r} appears twice in the ladder")
            seen.add(model)
        return ladder

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, methods: list[Method]) -> list[Method]:
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods must not repeat, got {[m.value for m in methods]}")
        return methods

    @field_validator("adapters")
    @classmethod
    def _unique_ranks(cls, adapters: list[AdapterSet]) -> list[AdapterSet]:
        ranks = [a.rank for a in adapters]
        if len(set(ranks)) != len(ranks):
            raise ValueError(f"each rank may appear once, got ranks {ranks}")
        return adapters

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if any(m.uses_adapters for m in self.methods) and not self.adapters:
            raise FieldError("adapters", "lora and qlora need at least one {rank, alphas} pair")
        unknown = sorted(set(self.resources.overrides) - set(self.ladder))
        if unknown:
            raise FieldError(
                "resources.overrides", f"names models that are not in the ladder: {unknown}"
            )
        if self.potential_trials > self.max_trials:
            raise FieldError(
                "maxTrials",
                f"the grid has {self.potential_trials} potential trials, more than maxTrials="
                f"{self.max_trials}; shrink the grid or raise maxTrials",
            )
        return self

    @model_validator(mode="after")
    def _targets_in_ladder(self) -> SweepSpec:
        """With adapters, `training.targetModules` must name layers of every catalogued
        model of the ladder (others are checked by the worker when it builds them)."""
        if not any(m.uses_adapters for m in self.methods):
            return self
        for model in self.ladder:
            arch = architecture(model)
            if arch is None:
                continue
            try:
                target_layers(arch, self.training.target_modules, model=model)
            except ValueError as error:
                message = str(error).removeprefix("training.targetModules: ")
                raise FieldError("training.targetModules", message) from None
        return self

    @property
    def lane_count(self) -> int:
        pairs = sum(len(a.alphas) for a in self.adapters)
        per_point = sum(pairs if m.uses_adapters else 1 for m in self.methods)
        points = 1
        for name in Axes.model_fields:
            values = getattr(self.axes, name)
            points *= len(values) if values else 1
        return per_point * points

    @property
    def potential_trials(self) -> int:
        return self.lane_count * len(self.ladder)


class Sweep(BaseModel):
    """A named spec: what `ladder run` and the controller work on."""

    model_config = ConfigDict(frozen=True)

    name: str
    namespace: str = ""
    spec: SweepSpec

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if len(name) > MAX_SWEEP_NAME or not SWEEP_NAME_RE.fullmatch(name):
            raise ValueError(
                f"{name!r} must be a DNS label (lowercase letters, digits, '-') of at most "
                f"{MAX_SWEEP_NAME} characters"
            )
        return name

    @field_validator("namespace")
    @classmethod
    def _namespace_label(cls, namespace: str) -> str:
        if namespace and (
            len(namespace) > MAX_NAMESPACE or not SWEEP_NAME_RE.fullmatch(namespace)
        ):
            raise ValueError(
                f"{namespace!r} must be a DNS label (lowercase letters, digits, '-') of at "
                f"most {MAX_NAMESPACE} characters"
            )
        return namespace


class SpecError(ValueError):
    """An invalid Sweep; `problems` lists (field path, message), paths as written by users."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {message}" for path, message in problems)
        super().__init__(f"{source}: invalid Sweep\n{lines}")


# Tags pydantic puts in an error's location for the union or validator member it tried.
_MEMBER_TAGS = ("function-", "union[", "list[", "literal[", "constrained-")


def _error_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(_MEMBER_TAGS) or part in ("str", "int", "float", "bool"):
            # pydantic names the union member it tried; users never wrote that.
            continue
        else:
            path += f".{part}" if path else part
    return path or "spec"


def validation_problems(error: ValidationError, prefix: str) -> list[tuple[str, str]]:
    """A pydantic error as (field path, message) pairs, paths as users write them."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        loc = item["loc"]
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            loc = (*loc, *cause.field.split("."))
        problems.append((_error_path(prefix, loc), message))
    return problems


class _NotJSON(ValueError):
    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(message)


# What PostgreSQL cannot store in text or JSONB (NUL), and what is no text at all (a lone
# surrogate, from a YAML escape such as "\ud800").
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def _json_like(value: Any, path: str, depth: int = 0) -> Any:
    """`value` as the apiserver would store it, or _NotJSON naming the path of what it would
    not: non-finite numbers, integers beyond int64, non-string keys, binary data, sets, NUL."""
    if depth > MAX_DEPTH:
        raise _NotJSON(path, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        bad = _UNSTORABLE.search(value)
        if bad is not None:
            what = "a NUL character" if bad.group() == "\x00" else "a lone surrogate"
            raise _NotJSON(path, f"contains {what}, which cannot be stored")
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise _NotJSON(path, f"{value} is beyond a 64-bit integer")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJSON(path, f"{value} is not a JSON number (.inf and .nan are refused)")
        # The apiserver takes 2.0 for an integer field (and stores 2): so does the model.
        return int(value) if value.is_integer() and INT64_MIN <= value <= INT64_MAX else value
    if isinstance(value, date):  # an explicit !!timestamp: kubectl sends a string
        return value.isoformat()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotJSON(path, f"key {key!r} is not a string (keys must be strings)")
            where = f"{path}.{key}" if path else key
            _json_like(key, where, depth + 1)
            out[key] = _json_like(item, where, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_like(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, bytes | bytearray):
        raise _NotJSON(path, "binary data (!!binary) is not a JSON value")
    if isinstance(value, set | frozenset):
        raise _NotJSON(path, "a set (!!set) is not a JSON value; write a list")
    raise _NotJSON(path, f"a {type(value).__name__} is not a JSON value")


def _as_json(document: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The document as the apiserver would store it: validating its JSON in strict mode
    refuses what the apiserver refuses (`epochs: "5"`, `tf32: "yes"`, `rank: 8.5`) instead of
    coercing it; what JSON cannot say is refused here, naming its path."""
    try:
        return _json_like(document, "")
    except _NotJSON as error:
        raise SpecError(source, [(error.path or "spec", str(error))]) from None
    except RecursionError:
        raise SpecError(source, [("spec", f"nested deeper than {MAX_DEPTH} levels")]) \
            from None


def parse_sweep(
    document: Mapping[str, Any], *, source: str = "<sweep>", default_name: str | None = None
) -> Sweep:
    """A Sweep from a parsed manifest (`kind: Sweep`) or a bare spec mapping."""
    if not isinstance(document, Mapping):
        raise SpecError(source, [("spec", f"expected a mapping, got {type(document).__name__}")])
    document = _as_json(document, source)
    if "kind" in document or "apiVersion" in document:
        problems = []
        if document.get("apiVersion") != API_VERSION:
            problems.append(("apiVersion", f"must be {API_VERSION!r}"))
        if document.get("kind") != KIND:
            problems.append(("kind", f"must be {KIND!r}"))
        metadata = document.get("metadata") or {}
        if not isinstance(metadata, Mapping) or not metadata.get("name"):
            problems.append(("metadata.name", "a Sweep manifest needs a name"))
        if problems:
            raise SpecError(source, problems)
        name, namespace = metadata["name"], metadata.get("namespace") or ""
        body, prefix = document.get("spec"), "spec"
    else:
        name, namespace = default_name or "sweep", ""
        body, prefix = document, ""
    if not isinstance(body, Mapping):
        raise SpecError(source, [(prefix or "spec", "expected a mapping")])
    try:
        spec = SweepSpec.model_validate_json(
            json.dumps(body), strict=True, by_alias=True, by_name=False
        )
    except ValidationError as error:
        raise SpecError(source, validation_problems(error, prefix)) from None
    try:
        return Sweep(name=name, namespace=namespace, spec=spec)
    except ValidationError as error:
        raise SpecError(source, validation_problems(error, "metadata")) from None


def load_documents_text(text: str, *, source: str = "<sweep>") -> list[Any]:
    """The non-empty YAML documents of a Sweep file's text (`manifest_yaml`'s rules), or a
    SpecError naming the line, the key or the file."""
    try:
        documents = load_documents(text)
    except ManifestError as error:
        raise SpecError(source, [(error.where, error.message)]) from None
    if not documents:
        raise SpecError(source, [("spec", "the file is empty")])
    return documents


def load_sweep_text(
    text: str, *, source: str = "<sweep>", default_name: str | None = None
) -> Sweep:
    """Parse YAML text holding one Sweep (empty documents, as from a trailing `---`, do not
    count); YAML errors name the line and column."""
    documents = load_documents_text(text, source=source)
    if len(documents) > 1:
        raise SpecError(source, [(
            "file", f"holds {len(documents)} documents; this command takes one Sweep "
            "(`ladder submit` applies several)",
        )])
    return parse_sweep(documents[0], source=source, default_name=default_name)


def sweep_manifest(sweep: Sweep) -> dict[str, Any]:
    """The Kubernetes manifest of a Sweep, camelCase, defaults included."""
    metadata: dict[str, str] = {"name": sweep.name}
    if sweep.namespace:
        metadata["namespace"] = sweep.namespace
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": sweep.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }

