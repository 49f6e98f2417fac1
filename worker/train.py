"""One trial: DSS fine-tuning with Ray Train (TorchTrainer + Accelerate), measured end to end.

`run_trial` (the driver) validates the data, starts a TorchTrainer and turns whatever happens
into one AttemptResult; it never raises for a training failure. `train_loop_per_worker` runs on
every Ray Train worker and `train` is its body, the whole recipe in one screen:

    build model -> probe step on the longest batch (an OOM verdict in seconds)
    -> [baseline: the untuned model evaluated, epoch 0 (training.baseline)]
    -> every epoch: train (DSS loss) -> eval loss -> LR plateau -> [generation]
       -> [save the weights: training.saveModel best/final/every-epoch, rank 0] -> report

The recipe is the paper's (docs/paper.md, "Training recipe"): AdamW, ReduceLROnPlateau on the
evaluation loss, every example trained twice per step (`predict:` -> label, `explain:` ->
rationale), loss = a * L_label + (1 - a) * L_rationale.

Batching: `training.batchSize` is the total batch of one optimizer step over all workers, so
each worker takes max(1, batchSize // workers) examples per step (the paper: 8 = 1 x 8 GPUs).
When batchSize is not a multiple of the worker count the effective batch is rounded down (to
at least one example per worker). With `training.microBatchSize` a worker's share runs as
several smaller forward/backward passes whose gradients add up before the one optimizer step
(DDP syncs on the last pass only): the paper's total batch of 8 on one GPU with the memory of
a batch of 1, instead of 8 GPUs that each hold a full replica. With
`training.gradientAccumulationSteps` k (the HF Trainer's), one optimizer step takes k such
batches per worker, each weighing 1/k: a step sees batchSize x k examples (the authors' QLoRA:
8 x 4 = 32). `training.lossReduction` says how a batch's tokens make its loss.

Ray Train V2 (Ray 2.60) keeps reported metrics for the driver only when they come with a
checkpoint, and `fit()` raises on failure without handing back its Result. A checkpoint would
need storage that every node shares: the driver and Ray Train's controller run on the head,
the ranks on other pods, and `<outputDir>` is a different disk on each (Ray refuses the
checkpoint: "Unable to set up cluster storage"). So no checkpoint is ever written: rank 0
puts its summary into a tiny actor on the driver's node (`ProgressBox`) after the probe step
and after every epoch, and the driver reads it back after a failure; on success rank 0's
return value (`Result.return_value`) is the summary. Both travel through Ray itself, so a
trial needs no shared storage (the trained weights do: training.saveModel, docs/install.md).

accelerate, ray and transformers are imported where they are used, so that a broken dataset
is refused in about a second, before any of them loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from orchestrator.core.lifecycle import Method, TrialState
from orchestrator.core.names import LOOPBACK_ENV, LOOPBACK_NODE_IP, RANK_IN_DRIVER_ENV
from orchestrator.core.spec import (
    InputTruncation,
    LossReduction,
    Precision,
    SaveModel,
    SelectionLoss,
    WeightDtype,
)
from orchestrator.core.stopping import StopReason, should_stop
from orchestrator.core.worker_contract import (
    BASELINE_EPOCH,
    WORKER_ENV,
    AttemptResult,
    AttemptSpec,
    EpochRecord,
    baseline_of,
    best_record,
    selected_loss,
    single_cpu_rank,
    trained_epochs,
)
from worker import phases
from worker.data.dss import DatasetError, DSSExample, load_dss, split_examples
from worker.memory import HostMemoryBudget, classify_failure
from worker.progress import ProgressBox
from worker.result import EpochSink, error_text, mark_running, store_url

if TYPE_CHECKING:
    from accelerate import Accelerator

    from worker.data.batching import EncodedExample
    from worker.generation import GenerationScore, TextScores
    from worker.telemetry import Sampler, TrialTelemetry
    from worker.tokenizer import Keep, TextTokenizer

__all__ = ["LoopConfig", "dss_forward", "dss_loss", "run_trial", "train_loop_per_worker"]

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# --- the DSS loss ----------------------------------------------------------------------------


def dss_loss(label_loss: Tensor, rationale_loss: Tensor | None, a: float) -> Tensor:
    """a * L_label + (1 - a) * L_rationale; with a = 1 the rationale plays no part at all."""
    if a == 1.0:
        return label_loss
    if rationale_loss is None:
        raise ValueError(f"the DSS loss with a={a} needs the rationale loss")
    return a * label_loss + (1.0 - a) * rationale_loss


def example_mean_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """training.lossReduction example-mean: each example's cross-entropy averaged over its own
    target tokens, then averaged over the examples that have any (what DDP's average of
    one-example devices computes, the authors' setup)."""
    from worker.data.batching import IGNORE_INDEX

    per_token = nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="none").view(labels.shape)
    counts = (labels != IGNORE_INDEX).sum(dim=1)
    present = counts > 0
    return (per_token.sum(dim=1)[present] / counts[present]).mean()


def task_loss(
    model: Callable[..., Any], input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
    reduction: LossReduction,
) -> Tensor:
    """One task's loss over a batch: the model's own token mean, or the example mean."""
    # No KV cache: a loss needs none (and CPU autocast cannot concatenate fp16 cache entries,
    # which training.qloraWeightDtype fp16 leaves).
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                   use_cache=False)
    if reduction is LossReduction.TOKEN_MEAN:
        return output.loss
    config = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the model
    if config is not None and not getattr(config, "is_encoder_decoder", True):
        # A causal LM predicts token t + 1 at position t: shift as its own loss does.
        return example_mean_loss(output.logits[:, :-1], labels[:, 1:])
    return example_mean_loss(output.logits, labels)


def dss_forward(
    model: Callable[..., Any], batch: Mapping[str, Tensor], a: float,
    reduction: LossReduction = LossReduction.TOKEN_MEAN,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(loss, label loss, rationale loss) of one batch; a = 1 skips the `explain:` pass."""
    label_loss = task_loss(model, batch["predict_input_ids"], batch["predict_attention_mask"],
                           batch["labels"], reduction)
    rationale_loss = None
    if a != 1.0:
        rationale_loss = task_loss(model, batch["explain_input_ids"],
                                   batch["explain_attention_mask"], batch["rationale_labels"],
                                   reduction)
    return dss_loss(label_loss, rationale_loss, a), label_loss, rationale_loss


# --- on every Ray Train worker ---------------------------------------------------------------


@dataclass(frozen=True)
class LoopConfig:
    """What the driver hands every worker (pickled by Ray)."""

    trial_json: str  # the AttemptSpec as JSON, validated again on the worker
    train: list[DSSExample]
    eval: list[DSSExample]
    started_at: float  # time.time() when the driver started: time to first step counts setup
    db_url: str | None  # where rank 0 writes epochs live; None: no live writes
    probe_only: bool = False  # stop after the probe step (`python -m worker probe`)
    model_dir: str | None = None  # where rank 0 keeps the weights (training.saveModel)
    progress: Any = None  # the ProgressBox actor's handle: rank 0's summary for the driver
    marks: dict[str, float] = dataclasses.field(default_factory=dict)  # worker.phases
    in_driver: bool = False  # the one rank runs in the driver's process (rank_in_driver)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train's entry point on each worker: devices, budget, telemetry, then `train`."""
    loop: LoopConfig = config["loop"]
    if not loop.in_driver:
        phases.mark("rank_process", phases.process_started())
    phases.mark("rank_loop")
    from accelerate import Accelerator

    from worker.memory import apply_cuda_budget
    from worker.models import import_method_libraries
    from worker.telemetry import Sampler

    trial = AttemptSpec.model_validate_json(loop.trial_json)
    import_method_libraries(trial.method)  # transformers (peft, bitsandbytes): before the baseline
    phases.mark("rank_imports")
    bf16 = trial.training.precision is Precision.BF16
    # Ray Train has set up the process group (gloo on CPU, nccl on GPU); Accelerate joins it.
    # Without cpu=True Accelerate only looks for accelerators: on a CPU-only worker it would
    # see one process, skip DDP, and every worker would train alone on all the data.
    accelerator = Accelerator(
        mixed_precision="bf16" if bf16 else "no", cpu=trial.resources.gpus_per_worker == 0
    )
    expected = 1 if loop.in_driver else ray_train_world_size()
    if accelerator.num_processes != expected:
        raise RuntimeError(
            f"Accelerate sees {accelerator.num_processes} processes where Ray Train started "
            f"{expected} workers: gradients would not be synchronised"
        )
    device = accelerator.device
    set_tf32(trial.training.tf32)
    if device.type == "cuda":
        if trial.memory_budget_bytes is not None:
            apply_cuda_budget(trial.memory_budget_bytes, device)
    else:
        torch.set_num_threads(trial.resources.cpus_per_worker)
    # On CPU the budget is measured against this baseline; on CUDA the allocator enforces it.
    host = HostMemoryBudget(trial.memory_budget_bytes if device.type == "cpu" else None)
    with Sampler(device, on_rss=host.observe) as sampler:
        return train(trial, loop, accelerator, host, sampler)


def set_tf32(enabled: bool) -> None:
    """training.tf32: whether CUDA matmuls and cuDNN convolutions may use TF32 (Ampere and
    later). Off is PyTorch's default and the authors' (they never set it); the flags do
    nothing on a CPU."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def train(
    trial: AttemptSpec, loop: LoopConfig, accelerator: Accelerator, host: HostMemoryBudget,
    sampler: Sampler,
) -> dict[str, Any] | None:
    from worker.data.batching import encode_examples, length_grouped_batches, longest_batch, shard
    from worker.models import build_model, save_trained

    cfg, a = trial.training, trial.dss_alpha
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    torch.manual_seed(trial.seed)  # every rank builds the same initial weights
    model, tokenizer, info = build_model(trial, device)
    phases.mark("model")
    host.check("building the model")
    keep = input_keep(cfg.input_truncation)
    layout: dict[str, Any] = {"keep_input": keep, "causal": info.causal,
                              "frame": prompt_frame(tokenizer, cfg.chat_template, info.causal)}
    train_set = encode_examples(loop.train, tokenizer, cfg.max_input_tokens, cfg.max_output_tokens,
                                **layout)
    eval_set = encode_examples(loop.eval, tokenizer, cfg.max_input_tokens, cfg.max_output_tokens,
                               **layout)
    phases.mark("encoded")
    per_worker = cfg.per_worker_batch(world)  # examples per optimizer step on this worker
    per_pass = cfg.pass_batch(world)  # examples per forward/backward pass (micro-batch)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay, fused=device.type == "cuda",
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_plateau.factor, patience=cfg.lr_plateau.patience
    )
    host.check("creating the optimizer")
    probe = to_device(train_set, longest_batch(train_set, per_pass), tokenizer, device)
    probe_step(accelerator, model, optimizer, probe, a, cfg.loss_reduction,
               after_forward=host.check)
    wait_for_device(device)  # CUDA runs ahead of the host: the probe is done only now
    host.check("the probe step on the longest batch")
    phases.mark("first_step")
    if rank == 0:
        phases.log_startup({**loop.marks, **phases.marks()})
    progress = Progress(
        first_step_seconds=time.time() - loop.started_at, trainable=info.trainable_parameters,
        total=info.total_parameters, sink=EpochSink(trial, loop.db_url) if rank == 0 else None,
        selection=cfg.selection_loss,
    )
    progress.telemetry = gather_telemetry(sampler)  # a collective: every rank calls it
    if loop.probe_only:
        return progress.summary() if rank == 0 else None
    if rank == 0:
        # The probe passed, with its peaks: a later OOM happened mid-run (mid_run_oom_note).
        publish(loop, progress.summary())
    if cfg.baseline:  # epoch 0: the untuned model, before any step (the probe updates nothing)
        progress.add(*baseline(accelerator, model, eval_set, loop.eval, tokenizer, per_pass,
                               trial, sampler, optimizer.param_groups[0]["lr"]))
        if rank == 0:
            publish(loop, progress.summary())
    torch.manual_seed(trial.seed + 1 + rank)  # dropout: different masks on different ranks
    accumulate = cfg.gradient_accumulation_steps  # batches per optimizer step (HF's)

    loop_started = time.perf_counter()  # end-to-end: training, evaluation, generation, saves
    for epoch in range(1, cfg.epochs + 1):
        sampler.new_epoch()  # this epoch's own memory peaks (the run's are kept)
        model.train()
        batches = length_grouped_batches(train_set, per_worker, trial.seed, epoch)
        losses = torch.zeros(3, device=device)  # loss, label loss, rationale loss
        steps = examples = 0
        started = time.perf_counter()
        mine = shard(batches, rank, world)
        for first in range(0, len(mine), accumulate):
            passes, group_of = [], []
            for group, indices in enumerate(mine[first:first + accumulate]):
                for i in range(0, len(indices), per_pass):
                    passes.append(to_device(train_set, indices[i:i + per_pass], tokenizer,
                                            device))
                    group_of.append(group)
                examples += len(indices)
            losses += train_step(accelerator, model, optimizer, passes, a,
                                 max_grad_norm=cfg.max_grad_norm,
                                 reduction=cfg.loss_reduction, group_of=group_of)
            steps += 1
        totals = torch.cat([losses, losses.new_tensor([steps, examples])])
        loss_sum, label_sum, rationale_sum, steps, examples = accelerator.reduce(
            totals, reduction="sum").tolist()  # the training loop's only host sync
        seconds = progress.trained(time.perf_counter() - started, int(examples))
        learning_rate = optimizer.param_groups[0]["lr"]
        eval_label, eval_rationale, eval_dss = evaluate(
            accelerator, model, eval_set, tokenizer, per_pass, a,
            with_rationale=cfg.selection_loss is SelectionLoss.RATIONALE,
            reduction=cfg.loss_reduction)
        eval_loss = selected_loss(
            cfg.selection_loss, label=eval_label, rationale=eval_rationale, dss=eval_dss)
        plateau.step(eval_loss)
        growth = host.check(f"epoch {epoch}")
        if host.budget_bytes is not None and rank == 0:
            log.info("epoch %d: host memory growth %.0f MiB of the %.0f MiB budget", epoch,
                     growth / 2**20, host.budget_bytes / 2**20)
        # training.earlyStopping, decided on the losses every rank computed alike (reduced).
        stop = should_stop([*(r.eval_loss for r in trained_epochs(progress.epochs)), eval_loss],
                           cfg.early_stopping)
        last = epoch == cfg.epochs or stop
        if last or (cfg.generate_every and epoch % cfg.generate_every == 0):
            progress.score, progress.text = generation_score(
                accelerator, model, eval_set, loop.eval, tokenizer, per_pass, trial)
        telemetry = gather_telemetry(sampler)
        progress.add(EpochRecord(
            epoch=epoch, train_loss=loss_sum / steps, train_label_loss=label_sum / steps,
            train_rationale_loss=None if a == 1.0 else rationale_sum / steps,
            eval_loss=eval_loss, eval_label_loss=eval_label,
            eval_rationale_loss=eval_rationale, eval_dss_loss=eval_dss,
            learning_rate=learning_rate,
            samples_per_second=examples / seconds, wall_seconds=seconds,
            peak_gpu_memory_bytes=telemetry.epoch_peak_gpu_memory_bytes,
            peak_host_memory_bytes=telemetry.peak_host_memory_bytes,
        ), telemetry)
        if last:
            progress.stopped(epoch, StopReason.EARLY_STOPPING if stop and epoch < cfg.epochs
                             else StopReason.EPOCHS)
        if rank == 0 and loop.model_dir and cfg.save_model.saves_after(
                epoch, epoch if last else cfg.epochs, progress.best_epoch):
            every = cfg.save_model is SaveModel.EVERY_EPOCH  # the authors' checkpoint
            save_trained(accelerator.unwrap_model(model), tokenizer, Path(loop.model_dir), {
                "sweep": trial.sweep, "trial": trial.trial_id, "attempt": trial.attempt,
                "base_model": trial.model, "method": trial.method.value, "rank": trial.rank,
                "alpha": trial.alpha, "epoch": epoch, "eval_loss": eval_loss,
                # What `ladder export` rebuilds the base from (worker/export.py).
                "device": device.type, "spec": trial.model_dump(mode="json", by_alias=True),
            }, optimizer_state=optimizer.state_dict() if every else None)
        wait_for_device(device)
        progress.end_to_end(time.perf_counter() - loop_started)
        if rank == 0:
            publish(loop, progress.summary())
        if not loop.in_driver:
            report(epoch)
        if stop:
            log.info("trial %s: early stopping after epoch %d (no %s-loss improvement over "
                     "%g for %d epochs)", trial.trial_id, epoch, cfg.selection_loss.value,
                     cfg.early_stopping.min_delta if cfg.early_stopping else 0.0,
                     cfg.early_stopping.patience if cfg.early_stopping else 0)
            break
    return progress.summary() if rank == 0 else None


def wait_for_device(device: torch.device) -> None:
    """Wait until the device has run everything queued (a no-op off CUDA): a time read
    after an asynchronous CUDA step measures the step, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
    passes: Sequence[Mapping[str, Tensor]], a: float, *, max_grad_norm: float | None = None,
    reduction: LossReduction = LossReduction.TOKEN_MEAN, group_of: Sequence[int] | None = None,
) -> Tensor:
    """One optimizer step over a worker's batch, run as one or more forward/backward passes
    (micro-batches). Each task's loss is a mean (over target tokens, or over examples with
    lossReduction example-mean), so a pass's loss is weighted by its share of the batch's
    tokens (or examples) of that task: the gradients add up to exactly those of the whole
    batch in one pass. With gradient accumulation, `group_of` names each pass's batch and
    every batch weighs 1/batches (the HF Trainer's loss / gradient_accumulation_steps). DDP
    all-reduces on the last pass only. Returns the step's (loss, label loss, rationale
    loss)."""
    label_shares = pass_weights(passes, "labels", reduction, group_of)
    rationale_shares = (pass_weights(passes, "rationale_labels", reduction, group_of)
                        if a != 1.0 else [1.0] * len(passes))
    losses = torch.zeros(3, device=accelerator.device)
    for number, batch in enumerate(passes):
        last = number == len(passes) - 1 or accelerator.num_processes == 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                _, label_loss, rationale_loss = dss_forward(model, batch, a, reduction)
                label_loss = label_loss * label_shares[number]
                if rationale_loss is not None:
                    rationale_loss = rationale_loss * rationale_shares[number]
                loss = dss_loss(label_loss, rationale_loss, a)
            accelerator.backward(loss)
        rationale = rationale_loss if rationale_loss is not None else torch.zeros_like(loss)
        losses += torch.stack([loss, label_loss, rationale]).detach().float()
    clip_gradients(accelerator, model, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses


def pass_weights(
    passes: Sequence[Mapping[str, Tensor]], key: str, reduction: LossReduction,
    group_of: Sequence[int] | None = None,
) -> Tensor | list[float]:
    """Each pass's weight in the step's loss of one task (`key`: its labels): its share of
    its batch's target tokens (token-mean) or of its batch's examples with any target token
    (example-mean), divided by the number of batches (`group_of`: each pass's batch; None:
    one batch). Kept on the device: counting on the host would stall a GPU every step."""
    from worker.data.batching import IGNORE_INDEX

    groups = list(group_of) if group_of is not None else [0] * len(passes)
    batches = max(groups) + 1
    if len(passes) == batches:  # one pass per batch: no counting needed
        return [1.0 / batches] * len(passes)
    targets = [batch[key] != IGNORE_INDEX for batch in passes]
    counts = torch.stack([
        t.sum() if reduction is LossReduction.TOKEN_MEAN else t.any(dim=1).sum()
        for t in targets]).float()
    index = torch.tensor(groups, device=counts.device)
    totals = torch.zeros(batches, device=counts.device).index_add_(0, index, counts)
    return counts / totals[index].clamp(min=1) / batches


def clip_gradients(accelerator: Accelerator, model: nn.Module, max_norm: float | None) -> None:
    """training.maxGradNorm: scale the gradients so their total L2 norm (over all workers,
    after DDP's all-reduce) is at most `max_norm`, as the HF Trainer does; None: no clipping."""
    if max_norm is not None:
        accelerator.clip_grad_norm_(model.parameters(), max_norm)


def prompt_frame(tokenizer: TextTokenizer, chat_template: bool, causal: bool) -> Any:
    """A decoder-only model's prompt frame: the tokenizer's chat template with
    training.chatTemplate (where it has one), else the plain one; None for T5."""
    from worker.data.batching import PromptFrame

    if not causal:
        return None
    frame = PromptFrame.of(tokenizer, chat_template)
    if chat_template and frame == PromptFrame.plain(tokenizer):
        log.warning("training.chatTemplate: the tokenizer has no chat template; prompts are "
                    "joined to their completions by a newline")
    return frame


def input_keep(truncation: InputTruncation) -> Keep:
    """training.inputTruncation as the tokenizer's `keep`: keep-end keeps the tail."""
    return "tail" if truncation is InputTruncation.KEEP_END else "head"


def to_device(
    encoded: Sequence[EncodedExample], indices: Sequence[int], tokenizer: TextTokenizer,
    device: torch.device,
) -> dict[str, Tensor]:
    from worker.data.batching import collate

    batch = collate([encoded[i] for i in indices], tokenizer.pad_token_id)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def probe_step(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
    batch: Mapping[str, Tensor], a: float, reduction: LossReduction = LossReduction.TOKEN_MEAN,
    after_forward: Callable[[str], object] | None = None,
) -> None:
    """One real step on the longest batch: forward, backward (with DDP's all-reduce) and an
    optimizer step, which allocates AdamW's state, so the run's peak memory comes in seconds.

    It measures and does not train: the gradients are zeroed before a step at learning rate 0
    (no update, whatever the gradient held) and the optimizer state is dropped afterwards.

    `after_forward(stage)` runs between the forward pass and the backward: the CPU budget's
    check (HostMemoryBudget.check), since a peak only grows, a forward pass that holds more
    than the budget already decides the verdict, and the backward (as long again) is skipped.
    """
    model.train()
    with accelerator.autocast():
        loss, _, _ = dss_forward(model, batch, a, reduction)
    if after_forward is not None:
        after_forward("the probe step's forward pass on the longest batch")
    accelerator.backward(loss)
    learning_rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            if p.grad is not None:
                p.grad.zero_()
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, learning_rates, strict=True):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    optimizer.state.clear()


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, model: nn.Module, eval_set: Sequence[EncodedExample],
    tokenizer: TextTokenizer, per_worker: int, a: float, *, with_rationale: bool = False,
    reduction: LossReduction = LossReduction.TOKEN_MEAN,
) -> tuple[float, float | None, float]:
    """(label loss, rationale loss, DSS-weighted loss) over the eval split, each averaged per
    example. The rationale pass runs when a < 1 or `with_rationale` (a = 1 with the rationale
    loss selected); otherwise the rationale loss is None. Each rank takes a share of the
    batches and runs the model without its DDP wrapper (no collectives), so the shares need
    not be equal."""
    from worker.data.batching import length_grouped_batches

    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    net = accelerator.unwrap_model(model)
    net.eval()
    rationale_a = 0.5 if with_rationale and a == 1.0 else a  # any a < 1 runs the explain pass
    total = torch.zeros(3, device=device)  # sums of label and rationale loss x examples, count
    for indices in length_grouped_batches(eval_set, per_worker, seed=0, epoch=0)[rank::world]:
        with accelerator.autocast():
            _, label, rationale = dss_forward(
                net, to_device(eval_set, indices, tokenizer, device), rationale_a, reduction)
        n = float(len(indices))
        rationale = rationale if rationale is not None else torch.zeros_like(label)
        total += torch.stack([label.float() * n, rationale.float() * n, total.new_tensor(n)])
    net.train()
    label_sum, rationale_sum, count = accelerator.reduce(total, reduction="sum").tolist()
    label_loss = label_sum / count
    rationale_loss = rationale_sum / count if rationale_a != 1.0 else None
    # The same weighting as dss_loss, on the per-example means.
    dss = label_loss if a == 1.0 else a * label_loss + (1.0 - a) * (rationale_loss or 0.0)
    return label_loss, rationale_loss, dss


def baseline(
    accelerator: Accelerator, model: nn.Module, eval_set: Sequence[EncodedExample],
    examples: Sequence[DSSExample], tokenizer: TextTokenizer, per_worker: int, trial: AttemptSpec,
    sampler: Sampler, learning_rate: float,
) -> tuple[EpochRecord, TrialTelemetry]:
    """Epoch 0 (training.baseline): the untuned model's eval label and rationale losses and
    its generation metrics on the generation subset, measured as every epoch measures them."""
    started = time.perf_counter()
    label, rationale, dss = evaluate(accelerator, model, eval_set, tokenizer, per_worker,
                                     trial.dss_alpha, with_rationale=True,
                                     reduction=trial.training.loss_reduction)
    score, _ = generation_score(accelerator, model, eval_set, examples, tokenizer, per_worker,
                                trial)
    telemetry = gather_telemetry(sampler)
    return EpochRecord(
        epoch=BASELINE_EPOCH, learning_rate=learning_rate,
        eval_loss=selected_loss(trial.training.selection_loss, label=label,
                                rationale=rationale, dss=dss),
        eval_label_loss=label, eval_rationale_loss=rationale, eval_dss_loss=dss,
        wall_seconds=time.perf_counter() - started,
        exact_match=score.exact_match, json_valid_rate=score.json_valid_rate,
        peak_gpu_memory_bytes=telemetry.epoch_peak_gpu_memory_bytes,
        peak_host_memory_bytes=telemetry.peak_host_memory_bytes,
    ), telemetry


def generation_score(
    accelerator: Accelerator, model: nn.Module, eval_set: Sequence[EncodedExample],
    examples: Sequence[DSSExample], tokenizer: TextTokenizer, per_worker: int, trial: AttemptSpec,
) -> tuple[GenerationScore, TextScores]:
    """Greedy generation on (at most generateLimit of) the eval split, shared by the ranks;
    every rank gets the texts of all (a collective) and scores them whole, since BLEU, chrF
    and TER are corpus statistics that do not add up across shares."""
    from accelerate.utils import gather_object

    from worker.generation import generate_texts, score_generations, text_scores

    limit = min(trial.training.generate_limit or len(eval_set), len(eval_set))
    mine = list(range(limit))[accelerator.process_index :: accelerator.num_processes]
    pairs: list[tuple[str, str]] = []
    if mine:
        with generation_autocast(accelerator, trial):
            texts = generate_texts(
                accelerator.unwrap_model(model), tokenizer, [eval_set[i] for i in mine],
                batch_size=per_worker, max_new_tokens=trial.training.max_output_tokens,
                device=accelerator.device,
            )
        pairs = list(zip(texts, [examples[i].label for i in mine], strict=True))
    everyone = gather_object([pairs]) if accelerator.num_processes > 1 else [pairs]
    generated = [g for share in everyone for g, _ in share]
    labels = [label for share in everyone for _, label in share]
    return score_generations(generated, labels), text_scores(generated, labels)


def generation_autocast(
    accelerator: Accelerator, trial: AttemptSpec
) -> contextlib.AbstractContextManager[Any]:
    """The precision generation runs in: the trial's autocast, except for QLoRA with fp16
    frozen weights (training.qloraWeightDtype fp16). There the KV cache holds fp16 keys and
    values, and a bf16 autocast refuses to concatenate them (torch.cat is a "promote" op that
    accepts only fp32 and the autocast dtype: "Unexpected floating ScalarType in
    at::autocast::prioritize"), so generation runs without autocast: the NF4 layers still
    compute in their bf16 compute dtype, the fp16 weights in fp16. Losses need no cache and
    keep the autocast."""
    if trial.method is Method.QLORA and trial.training.qlora_weight_dtype is WeightDtype.FP16:
        return contextlib.nullcontext()
    return accelerator.autocast()


def gather_telemetry(sampler: Sampler) -> TrialTelemetry:
    """Every worker's peaks so far, merged (a collective: all ranks call it)."""
    from accelerate.utils import gather_object

    from worker.telemetry import merge_telemetry

    return merge_telemetry(gather_object([sampler.snapshot()]))


def ray_train_world_size() -> int:
    import ray.train

    return int(ray.train.get_context().get_world_size())


def report(epoch: int) -> None:
    """Every rank reports (it is a barrier). No checkpoint: it would need storage shared by
    every node (see the module's docstring); the summary goes through `publish`."""
    import ray.train

    ray.train.report({"epoch": epoch})


def progress_box() -> Any:
    """A ProgressBox actor pinned to this (the driver's) node; it takes no CPU."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return ray.remote(ProgressBox).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
    ).remote()


def publish(loop: LoopConfig, summary: dict[str, Any]) -> None:
    """Hand rank 0's summary to the driver (waits for it: a failure right after keeps it)."""
    if isinstance(loop.progress, ProgressBox):  # the rank runs in the driver: no actor
        loop.progress.put(summary)
    elif loop.progress is not None:
        import ray

        ray.get(loop.progress.put.remote(summary))


def read_progress(box: Any) -> dict[str, Any]:
    """The summary rank 0 published last, or {} if none (or the box is unreachable)."""
    import ray

    try:
        return dict(ray.get(box.get.remote(), timeout=60))
    except Exception as error:  # The trial's verdict must not depend on this read.
        log.warning("no progress from the trial's ranks: %s", error)
        return {}


class Progress:
    """The trial so far, as rank 0 sees it: what the driver turns into the AttemptResult."""

    def __init__(
        self, *, first_step_seconds: float, trainable: int, total: int, sink: EpochSink | None,
        selection: SelectionLoss = SelectionLoss.LABEL,
    ) -> None:
        from worker.telemetry import TrialTelemetry

        self.first_step_seconds, self.trainable, self.total = first_step_seconds, trainable, total
        self.sink, self.selection = sink, selection
        self.epochs: list[EpochRecord] = []
        self.telemetry = TrialTelemetry()
        self.score: GenerationScore | None = None
        self.text: TextScores | None = None
        self.train_seconds = 0.0
        self.loop_seconds = 0.0
        self.examples = 0
        self.stopped_epoch: int | None = None
        self.stop_reason: StopReason | None = None

    def stopped(self, epoch: int, reason: StopReason) -> None:
        """Training ended normally after `epoch`, for `reason`."""
        self.stopped_epoch, self.stop_reason = epoch, reason

    def trained(self, seconds: float, examples: int) -> float:
        """Count one epoch's training (not evaluation) time and examples; returns seconds."""
        self.train_seconds += seconds
        self.examples += examples
        return seconds

    def end_to_end(self, seconds: float) -> None:
        """The whole epoch loop so far: training, evaluation, generation and saves."""
        self.loop_seconds = seconds

    def add(self, record: EpochRecord, telemetry: TrialTelemetry) -> None:
        self.epochs.append(record)
        self.telemetry = telemetry
        if self.sink is not None:
            self.sink.write(record)

    @property
    def best(self) -> EpochRecord | None:
        """The epoch with the lowest finite selection loss (the earliest of equals)."""
        return best_record(self.epochs)

    @property
    def best_epoch(self) -> int | None:
        best = self.best
        return best.epoch if best else None

    def summary(self) -> dict[str, Any]:
        """AttemptResult fields, JSON-ready (it crosses to the driver through Ray)."""
        best, t, base = self.best, self.telemetry, baseline_of(self.epochs)
        return {
            "epochs": [r.model_dump(mode="json") for r in self.epochs],
            "epochs_completed": len(trained_epochs(self.epochs)),
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason.value if self.stop_reason else None,
            "baseline_eval_loss": base.eval_loss if base else None,
            "baseline_exact_match": base.exact_match if base else None,
            "baseline_json_valid_rate": base.json_valid_rate if base else None,
            "best_eval_loss": best.eval_loss if best else None,
            "best_epoch": best.epoch if best else None,
            "selection_loss": self.selection.value,
            "eval_label_loss": best.eval_label_loss if best else None,
            "eval_rationale_loss": best.eval_rationale_loss if best else None,
            "samples_per_second": (
                self.examples / self.train_seconds if self.train_seconds > 0 else None
            ),
            "end_to_end_samples_per_second": (
                self.examples / self.loop_seconds if self.loop_seconds > 0 else None
            ),
            "time_to_first_step_seconds": self.first_step_seconds,
            "trainable_parameters": self.trainable,
            "total_parameters": self.total,
            "exact_match": self.score.exact_match if self.score else None,
            "json_valid_rate": self.score.json_valid_rate if self.score else None,
            "bleu": self.text.bleu if self.text else None,
            "chrf": self.text.chrf if self.text else None,
            "ter": self.text.ter if self.text else None,
            "dsl_similarity": self.text.dsl_similarity if self.text else None,
            "peak_host_memory_bytes": t.peak_host_memory_bytes,
            "peak_gpu_memory_bytes": t.peak_gpu_memory_bytes,
            "total_gpu_memory_bytes": t.total_gpu_memory_bytes,
            "gpu_memory_per_device": t.gpu_memory_per_device,
            "peak_torch_allocated_bytes": t.peak_torch_allocated_bytes,
            "peak_torch_reserved_bytes": t.peak_torch_reserved_bytes,
        }


# --- the driver ------------------------------------------------------------------------------


def load_split(trial: AttemptSpec) -> tuple[list[DSSExample], list[DSSExample]]:
    """The trial's dataset, validated and split into (train, eval); DatasetError otherwise.

    An input that repeats an earlier one is dropped before the split (the first is kept) and
    the count is logged, so no input is in both train and eval (docs/reliability.md)."""
    ds = trial.dataset
    examples = load_dss(ds.source, labels_must_be_json=ds.labels_must_be_json, size=ds.size,
                        preamble=ds.preamble.value, seed=ds.split_seed)
    train, evaluation, repeats = split_examples(ds.source, examples, ds.eval_fraction,
                                                ds.split_seed)
    if repeats:
        log.warning("%s: dropped %d example(s) whose input repeats an earlier one (the first "
                    "is kept), so no input is in both train and eval; %d left",
                    ds.source, repeats, len(train) + len(evaluation))
    return train, evaluation


def run_trial(trial: AttemptSpec, *, probe_only: bool = False) -> AttemptResult:
    """Run one trial attempt and return its result: success, or a classified failure.

    `probe_only`: stop after the probe step; success then means "the trial fits".
    """
    started_at, t0 = datetime.now(UTC), time.time()

    def finish(status: TrialState, **fields: Any) -> AttemptResult:
        return AttemptResult.for_trial(
            trial, status=status, started_at=started_at, finished_at=datetime.now(UTC),
            wall_seconds=time.time() - t0, **fields,
        )

    # The data first: a broken dataset must fail in a second, before any model exists.
    try:
        train_split, eval_split = load_split(trial)
    except (DatasetError, ValueError) as error:
        return finish(TrialState.FAILED, error=error_text(error))
    phases.mark("dataset")

    if not probe_only:
        mark_running(trial, started_at)
    phases.mark("marked_running")
    storage = Path(trial.output_dir).resolve() / "ray"
    name = f"{trial.trial_id}-a{trial.attempt}-{started_at:%Y%m%d-%H%M%S-%f}"
    saves = trial.training.save_model is not SaveModel.NONE and not probe_only
    loop = LoopConfig(trial.model_dump_json(), train_split, eval_split, t0,
                      None if probe_only else store_url(trial), probe_only,
                      str(Path(trial.output_dir).resolve() / "model") if saves else None)
    reported: dict[str, Any] = {}
    try:
        summary = fit(trial, loop, storage, name, reported)
    except Exception as error:
        state, kind = classify_failure(error, budget_set=trial.memory_budget_bytes is not None)
        log.error("trial %s ended %s: %s", trial.trial_id, state.value, error_text(error, 500))
        fields = summary_fields(reported)
        note = mid_run_oom_note(state, reported)
        text = error_text(error) if note is None else f"{note}\n{error_text(error, 2800)}"
        return finish(state, oom_kind=kind, error=text, **fields)
    return finish(TrialState.SUCCEEDED, **summary_fields(summary))


def mid_run_oom_note(state: TrialState, reported: Mapping[str, Any]) -> str | None:
    """For an OOM after the probe step passed (rank 0 published after it): which epoch ran
    out of memory. The probe runs the longest batch with the optimizer state in place, so an
    OOM later points at fragmentation, generation or evaluation, not at the model's size."""
    if state is not TrialState.OOM or reported.get("time_to_first_step_seconds") is None:
        return None
    epoch = int(reported.get("epochs_completed") or 0) + 1
    return (f"out of memory in epoch {epoch}, after the probe step on the longest batch had "
            f"passed ({epoch - 1} epochs completed)")


def fit(
    trial: AttemptSpec, loop: LoopConfig, storage: Path, name: str, reported: dict[str, Any]
) -> dict[str, Any]:
    """Run the TorchTrainer; rank 0's summary on success, Ray's exception on failure, with
    `reported` then filled with the last summary rank 0 published (the ProgressBox's)."""
    if rank_in_driver(trial):
        return _fit_in_driver(loop, reported)  # Ray is not even imported
    import ray

    connect_ray()
    phases.mark("ray_joined")
    box = progress_box()
    loop = dataclasses.replace(loop, progress=box)
    try:
        return _fit(trial, loop, storage, name)
    except Exception:
        reported.update(read_progress(box))
        raise
    finally:
        with contextlib.suppress(Exception):
            ray.kill(box)


def rank_in_driver(trial: AttemptSpec) -> bool:
    """Whether the trial's one rank trains in this (the driver's) process, without Ray Train:
    when the local backend asks (RANK_IN_DRIVER_ENV) and the trial is one worker on CPU.

    A Ray Train worker group costs two fresh processes (its controller and the rank), each
    importing Ray Train and torch again, and a Ray connection: most of a tiny trial's time to
    first step (docs/benchmarks.md, "Time to first step"). On one machine and one CPU worker
    there is no process group to set up and nothing to place, so the driver trains itself:
    same `train_loop_per_worker`, same recipe, same result. Multi-worker and GPU trials, and
    every trial on a cluster (where the driver runs on the head pod), keep Ray Train.
    """
    return os.environ.get(RANK_IN_DRIVER_ENV) == "1" and single_cpu_rank(trial)


def _fit_in_driver(loop: LoopConfig, reported: dict[str, Any]) -> dict[str, Any]:
    """`train_loop_per_worker` in this process; on failure `reported` gets the last summary
    rank 0 published, as from the ProgressBox actor on the Ray Train path."""
    box = ProgressBox()
    phases.mark("trainer")
    loop = dataclasses.replace(loop, progress=box, in_driver=True,
                               marks={**loop.marks, **phases.marks()})
    try:
        summary = train_loop_per_worker({"loop": loop})
    except Exception:
        reported.update(box.get())
        raise
    if not isinstance(summary, dict):
        raise RuntimeError(f"rank 0 returned no summary (got {type(summary).__name__})")
    return summary


def _fit(trial: AttemptSpec, loop: LoopConfig, storage: Path, name: str) -> dict[str, Any]:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    phases.mark("trainer")
    loop = dataclasses.replace(loop, marks={**loop.marks, **phases.marks()})
    res = trial.resources
    per_worker = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop},
        scaling_config=ScalingConfig(
            num_workers=res.workers, use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={k: v for k, v in per_worker.items() if v},
        ),
        run_config=RunConfig(
            # Ray Train's own run state, written by its controller on the driver's node only
            # (no rank writes there: no checkpoints).
            name=name,
            storage_path=str(storage),
            # A failed attempt is the escalation logic's to retry, not Ray Train's.
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    summary = trainer.fit().return_value
    if not isinstance(summary, dict):
        raise RuntimeError(f"rank 0 returned no summary (got {type(summary).__name__})")
    return summary


def connect_ray() -> bool:
    """Join the Ray cluster (RAY_ADDRESS, set inside a Ray job) or start a local runtime.

    Returns whether this call connected (False: Ray was already initialised by the caller).
    """
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or None
    runtime_env = None
    if address is None:
        # A runtime of our own: its workers must import this checkout, installed or not.
        paths = [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]
        env = {k: v for k, v in {**WORKER_ENV, **LOOPBACK_ENV}.items() if k not in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        runtime_env = {"env_vars": env}
    # ray.init() replaces the SIGTERM handler with its own (sys.exit); the worker's (a stop is
    # a cancellation, see worker/cli.py) must stay.
    handler = signal.getsignal(signal.SIGTERM)
    # A runtime of our own is one machine's: on loopback (names.LOOPBACK_NODE_IP).
    node_ip = None if address else LOOPBACK_NODE_IP
    ray.init(address=address, runtime_env=runtime_env, include_dashboard=False,
             configure_logging=False, _node_ip_address=node_ip)
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
    return True


_IDENTITY_AND_OUTCOME = frozenset({
    "sweep", "namespace", "trial_id", "lane", "attempt", "model", "model_index", "method",
    "rank", "alpha", "dss_alpha", "seed", "status", "oom_kind", "error", "started_at",
    "finished_at", "wall_seconds",
})


def summary_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The AttemptResult fields of a worker summary (Ray may add keys of its own)."""
    fields = {
        k: v for k, v in summary.items()
        if k in AttemptResult.model_fields and k not in _IDENTITY_AND_OUTCOME and v is not None
    }
    if "epochs" in fields:
        fields["epochs"] = [EpochRecord.model_validate(e) for e in fields["epochs"]]
    return fields
