"""Sweep makespan simulator: a Sweep replayed through the real `plan` against a cost model.

Nothing here trains. A discrete-event loop asks the real core (`plan`, and through it the
escalation rules and the scheduler) what to launch, gives every launched trial a duration and
an outcome from a `CostModel`, advances the clock to the next finish, and plans again, until
the sweep is finished. So the simulated makespan is what Ladder's own decisions would give
on a cluster whose trials cost what the model says, and two procedures can be compared under
the same per-trial costs:

- `paper_procedure`: the study's way (docs/paper.md): every trial on all 8 GPUs (8-way DDP, one
  example per GPU), one trial at a time, no memory prediction, an OOM found by running the
  trial until the failing batch comes.
- `ladder_procedure`: the spec as written (k8s/examples/paper-grid.yaml: per-model
  resources, 8 trials at once, predicted OOMs recorded without launching), an OOM found by
  the worker's probe step on the longest batch.

The cost model (`CostModel`) is plain arithmetic from the architecture, stated in its fields:
per-sample FLOPs (`estimate.flops_per_sample`) at an assumed MFU of the card's peak (or a
measured samples/s from the GPU benchmark's JSON), a per-step launch overhead, an exposed
gradient all-reduce (NVLink inside a node, the network across nodes), evaluation, and greedy
generation as a latency-bound decode loop; memory (does the trial fit?) from
`estimate.estimate_memory` at the trial's per-device batch, or a given outcome function.

`lower_bound` gives the physical limit the simulated makespan is measured against: no
schedule of the same trials, on the same resources and cluster, can finish sooner (its
docstring defines it).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.core.catalog import architecture
from orchestrator.core.escalation import AttemptObservation
from orchestrator.core.estimate import (
    Attention,
    adapter_parameters,
    estimate_memory,
    flops_per_sample,
    predicted_oom_fn,
)
from orchestrator.core.grid import GridPoint, expand
from orchestrator.core.lifecycle import Method, OOMKind, TrialState
from orchestrator.core.plan import LaunchTrial, Observed, RecordUnlaunched, plan
from orchestrator.core.scheduler import Capacity, demand, unschedulable
from orchestrator.core.spec import OnOOM, Precision, Resources, Sweep, SweepSpec

__all__ = [
    "LADDER_RECIPE",
    "PAPER_RECIPE",
    "Cluster",
    "CostModel",
    "Costs",
    "LowerBound",
    "Measured",
    "Procedure",
    "Recipe",
    "SimulatedTrial",
    "Simulation",
    "TrialCost",
    "fitted_resources",
    "ladder_procedure",
    "lower_bound",
    "paper_procedure",
    "simulate",
]

GiB = 2**30


@dataclass(frozen=True, slots=True)
class Cluster:
    """The paper's cluster: 2 nodes x 4 H100 80 GB (each node: 2x Xeon 8480+, 2 TB RAM)."""

    nodes: int = 2
    gpus_per_node: int = 4
    cpus_per_node: int = 112
    device_bytes: int = 80 * GiB
    peak_bf16_flops: float = 989e12  # H100 SXM dense bf16
    peak_fp32_flops: float = 67e12  # H100 SXM fp32 without TF32 (the paper's full and LoRA)
    intra_node_bytes_per_second: float = 150e9  # all-reduce bus bandwidth over NVLink
    inter_node_bytes_per_second: float = 12.5e9  # 100 Gb/s between the nodes (assumed)

    @property
    def capacity(self) -> Capacity:
        return Capacity(gpus=self.nodes * self.gpus_per_node, cpus=self.nodes * self.cpus_per_node)

    def peak_flops(self, precision: Precision) -> float:
        return self.peak_bf16_flops if precision is Precision.BF16 else self.peak_fp32_flops


@dataclass(frozen=True, slots=True)
class Recipe:
    """What a trial computes, as far as its cost goes (the same for both procedures)."""

    precision: Mapping[Method, Precision]
    attention: Attention
    generate_every_epoch: bool  # greedy generation on the eval split after every epoch
    max_new_tokens: int


# The paper's scripts: fp32 full and LoRA (no TF32), bf16-compute QLoRA, eager attention,
# generation of up to 1,024 tokens after every one of the 100 epochs.
PAPER_RECIPE = Recipe(
    precision={Method.FULL: Precision.FP32, Method.LORA: Precision.FP32,
               Method.QLORA: Precision.BF16},
    attention="eager", generate_every_epoch=True, max_new_tokens=1024,
)
# Ladder's defaults: bf16 autocast everywhere, SDPA, generation after the last epoch only.
LADDER_RECIPE = Recipe(
    precision=dict.fromkeys(Method, Precision.BF16),
    attention="sdpa", generate_every_epoch=False, max_new_tokens=1024,
)


@dataclass(frozen=True, slots=True)
class Measured:
    """A measured (model, method) point from the GPU benchmark (bf16, one GPU)."""

    samples_per_second: float
    batch_per_device: int
    peak_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class TrialCost:
    """What one trial costs on its resources."""

    fits: bool
    memory_bytes: int  # predicted (or measured and scaled) peak per device
    run_seconds: float  # start to finish, when it fits
    step_seconds: float
    epoch_seconds: float
    startup_seconds: float

    def oom_seconds(self, detection: str, fraction_of_epoch: float) -> float:
        """Launch to OOM verdict: the probe step, or running until the failing batch."""
        if detection == "probe":
            return self.startup_seconds + 2 * self.step_seconds
        return self.startup_seconds + fraction_of_epoch * self.epoch_seconds


class Costs(Protocol):
    """What the simulator needs of a cost model: the cluster, and each trial's cost."""

    @property
    def cluster(self) -> Cluster: ...

    def cost(self, spec: SweepSpec, trial: GridPoint) -> TrialCost: ...


@dataclass(frozen=True, slots=True)
class CostModel:
    """Per-trial time and memory, from the architecture (see the module docstring)."""

    cluster: Cluster = Cluster()
    recipe: Recipe = PAPER_RECIPE
    mfu: float = 0.35  # of the card's dense peak, when no measurement is given
    train_examples: int = 800  # 1,000 examples, 80/20 split
    eval_examples: int = 200
    startup_seconds: float = 120.0  # RayJob: pods scheduled, image cached, model built
    step_overhead_seconds: float = 0.010  # optimizer step, data, Python
    block_pass_seconds: float = 0.00025  # kernel launches per block per pass per task
    decode_seconds_per_block: float = 0.0003  # one generated token, per decoder block
    measured: Mapping[tuple[str, Method], Measured] = field(default_factory=dict)
    fits: Callable[[GridPoint], bool] | None = None  # overrides the memory model's verdict
    # Epochs a trial runs of its configured ones (training.earlyStopping); None: all of them.
    epochs_run: Callable[[GridPoint, int], int] | None = None

    def per_device_batch(self, spec: SweepSpec, trial: GridPoint) -> int:
        """Examples per optimizer step on one worker (compute)."""
        return trial.lane.training(spec.training).per_worker_batch(trial.resources.workers)

    def cost(self, spec: SweepSpec, trial: GridPoint) -> TrialCost:
        arch = architecture(trial.model)
        if arch is None:
            raise ValueError(f"no architecture for {trial.model!r}")
        training = trial.lane.training(spec.training)
        method, lane = trial.lane.method, trial.lane
        precision = self.recipe.precision[method]
        gpus = max(1, trial.resources.gpus)
        workers = trial.resources.workers
        batch = self.per_device_batch(spec, trial)
        passes = training.accumulation_steps(workers)  # forward/backward passes per step
        li, lo = training.max_input_tokens, training.max_output_tokens
        two = lane.dss_alpha != 1.0

        targets = training.target_modules
        flops = flops_per_sample(arch, method, li, lo, rank=lane.rank, dss_two_tasks=two,
                                 target_modules=targets)
        measured = self.measured.get((trial.model, method))
        if measured is not None and precision is Precision.BF16:
            per_sample = 1.0 / measured.samples_per_second
        else:
            per_sample = flops / (self.cluster.peak_flops(precision) * self.mfu)
        # T5: encoder and decoder blocks; decoder-only models have one stack.
        decoder_blocks = getattr(arch, "num_decoder_layers", arch.num_layers)
        blocks = arch.num_layers + (decoder_blocks if not arch.causal else 0)
        overhead = self.step_overhead_seconds + blocks * 3 * (2 if two else 1) * (
            self.block_pass_seconds)
        compute = batch * per_sample
        overhead *= passes  # kernel launches per pass; compute is the same in fewer passes
        trainable = (arch.parameters if method is Method.FULL
                     else adapter_parameters(arch, lane.rank or 0, targets))
        allreduce = 0.0
        if workers > 1:
            bandwidth = (self.cluster.intra_node_bytes_per_second
                         if gpus <= self.cluster.gpus_per_node
                         else self.cluster.inter_node_bytes_per_second)
            allreduce = 2 * (workers - 1) / workers * 4 * trainable / bandwidth
        # Overlapped with the backward of the step's last pass (the others skip the sync).
        exposed = max(0.0, allreduce - compute / passes * 2 / 3)
        step = compute + overhead + exposed
        steps = math.ceil(self.train_examples / (batch * workers))
        # Evaluation and generation run in passes of the same (micro) size.
        eval_batch = training.pass_batch(workers)
        eval_steps = math.ceil(self.eval_examples / (eval_batch * workers))
        evaluation = eval_steps * (eval_batch * per_sample + overhead / passes) / 3
        generation = eval_steps * self.recipe.max_new_tokens * (
            decoder_blocks * self.decode_seconds_per_block)
        epoch = steps * step + evaluation
        epochs = training.epochs
        if self.epochs_run is not None:
            epochs = max(1, min(epochs, self.epochs_run(trial, epochs)))
        run = self.startup_seconds + epochs * epoch + generation * (
            epochs if self.recipe.generate_every_epoch else 1)
        if self.recipe.generate_every_epoch:
            epoch += generation

        memory = estimate_memory(
            arch, method, rank=lane.rank, batch_per_device=training.pass_batch(workers),
            input_tokens=li,
            output_tokens=lo, precision=precision, dss_two_tasks=two,
            gradient_checkpointing=training.gradient_checkpointing,
            attention=self.recipe.attention, data_parallel=workers > 1,
            double_quant=training.qlora_double_quant, target_modules=targets,
        ).total_bytes
        if measured is not None and measured.peak_bytes and precision is Precision.BF16:
            at_measured = estimate_memory(
                arch, method, rank=lane.rank, batch_per_device=measured.batch_per_device,
                input_tokens=li, output_tokens=lo, precision=precision, dss_two_tasks=two,
                attention=self.recipe.attention, data_parallel=workers > 1,
                double_quant=training.qlora_double_quant, target_modules=targets,
            ).total_bytes
            memory = int(measured.peak_bytes * memory / at_measured)
        fits = self.fits(trial) if self.fits is not None else memory <= self.cluster.device_bytes
        return TrialCost(fits, memory, run, step, epoch, self.startup_seconds)


@dataclass(frozen=True, slots=True)
class Procedure:
    """How a sweep is run: the spec the core plans with, how OOMs are found."""

    name: str
    spec: SweepSpec
    oom_detection: str  # "probe" (seconds) or "run" (until the failing batch)
    oom_fraction_of_epoch: float = 0.5  # "run": where in epoch 1 the longest batch comes


def fitted_resources(
    spec: SweepSpec, cost: CostModel, choices: tuple[int, ...] = (1, 2, 4, 8)
) -> SweepSpec:
    """The spec with per-model worker counts: for each model, the fewest workers (one GPU
    each) at which every lane's trial that fits at all fits the device under the cost model's
    memory model (a trial that fits nowhere, say XL full under DDP, is left to its OOM
    verdict and does not pull its model onto more GPUs), the largest choice where none fits.
    What a user writes as `resources.overrides`."""

    def fitting(workers: int) -> tuple[SweepSpec, dict[str, bool]]:
        trial_spec = spec.model_copy(update={"resources": Resources(
            workers=workers, gpus_per_worker=1, cpus_per_worker=spec.resources.cpus_per_worker,
        )})
        grid = expand(Sweep(name="fit", spec=trial_spec))
        return trial_spec, {t.trial_id: cost.cost(trial_spec, t).fits
                            for t in grid.all_trials()}

    verdicts = {workers: fitting(workers) for workers in choices}
    models = {t.trial_id: t.model for t in expand(Sweep(name="fit", spec=spec)).all_trials()}
    overrides: dict[str, dict[str, int]] = {}
    for model in spec.ladder:
        ids = [trial_id for trial_id, m in models.items() if m == model]
        feasible = [i for i in ids if any(verdicts[w][1][i] for w in choices)]
        chosen = next((w for w in choices if feasible and all(verdicts[w][1][i] for i in feasible)),
                      choices[-1])
        overrides[model] = {"workers": chosen, "gpus_per_worker": 1}
    resources = Resources.model_validate({
        "workers": max(choices), "gpusPerWorker": 1,
        "cpusPerWorker": spec.resources.cpus_per_worker,
        "overrides": {m: {"workers": o["workers"]} for m, o in overrides.items()},
    })
    return spec.model_copy(update={"resources": resources})


def paper_procedure(spec: SweepSpec, gpus: int = 8) -> Procedure:
    """One trial at a time on all the cluster's GPUs (8 in the paper), no prediction, OOMs
    found by running."""
    sequential = spec.model_copy(update={
        "resources": Resources(workers=gpus, gpus_per_worker=1),
        "parallelism": 1,
        "escalation": spec.escalation.model_copy(update={"predict_oom": False}),
    })
    return Procedure("paper", sequential, oom_detection="run")


def ladder_procedure(spec: SweepSpec) -> Procedure:
    """The spec as written (per-model resources, parallelism, prediction), probe-step OOMs."""
    return Procedure("ladder", spec, oom_detection="probe")


@dataclass(frozen=True, slots=True)
class SimulatedTrial:
    trial_id: str
    model: str
    method: str
    lane: str
    gpus: int
    start: float
    end: float
    state: str  # succeeded | oom | predicted (recorded, never launched) | skipped
    cpus: int = 0
    model_index: int = 0


@dataclass(frozen=True, slots=True)
class Simulation:
    procedure: str
    makespan_seconds: float
    gpu_seconds: float  # GPU time held by launched trials
    trials: tuple[SimulatedTrial, ...]

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t.state == state)

    @property
    def makespan_hours(self) -> float:
        return self.makespan_seconds / 3600

    def utilisation(self, gpus: int) -> float:
        return self.gpu_seconds / (gpus * self.makespan_seconds) if self.makespan_seconds else 0


def simulate(
    sweep: Sweep, procedure: Procedure, cost: Costs, *, max_passes: int = 100_000
) -> Simulation:
    """Run the procedure's sweep to the end on simulated time; see the module docstring."""
    spec = procedure.spec
    grid = expand(sweep.model_copy(update={"spec": spec}))
    capacity = cost.cluster.capacity
    predictor = predicted_oom_fn(spec)
    predicted = frozenset(
        t.trial_id for t in grid.all_trials() if predictor is not None and predictor(t)
    )
    attempts: dict[str, list[AttemptObservation]] = {}
    running: list[tuple[float, int, str, int]] = []  # (end, sequence, trial id, attempt)
    finishing: dict[tuple[str, int], AttemptObservation] = {}
    records: list[SimulatedTrial] = []
    now = gpu_seconds = 0.0
    sequence = 0
    for _ in range(max_passes):
        decided = plan(grid, spec, Observed(attempts, capacity, predicted_oom=predicted))
        for action in decided.actions:
            trial = action.trial
            if isinstance(action, RecordUnlaunched):
                attempts.setdefault(trial.trial_id, []).append(AttemptObservation(
                    trial.trial_id, action.attempt, action.state, oom_kind=action.oom_kind))
                state = ("predicted" if action.oom_kind is OOMKind.PREDICTED
                         else action.state.value)
                records.append(SimulatedTrial(trial.trial_id, trial.model,
                                              trial.lane.method.value, trial.lane.name, 0,
                                              now, now, state, 0, trial.model_index))
            elif isinstance(action, LaunchTrial):
                c = cost.cost(spec, trial)
                if c.fits:
                    seconds = c.run_seconds
                    outcome = AttemptObservation(trial.trial_id, action.attempt,
                                                 TrialState.SUCCEEDED, best_eval_loss=0.1)
                else:
                    seconds = c.oom_seconds(procedure.oom_detection,
                                            procedure.oom_fraction_of_epoch)
                    outcome = AttemptObservation(trial.trial_id, action.attempt,
                                                 TrialState.OOM, oom_kind=OOMKind.GPU)
                attempts.setdefault(trial.trial_id, []).append(AttemptObservation(
                    trial.trial_id, action.attempt, TrialState.RUNNING))
                finishing[(trial.trial_id, action.attempt)] = outcome
                heapq.heappush(running, (now + seconds, sequence, trial.trial_id,
                                         action.attempt))
                sequence += 1
                gpu_seconds += seconds * trial.resources.gpus
                records.append(SimulatedTrial(
                    trial.trial_id, trial.model, trial.lane.method.value, trial.lane.name,
                    trial.resources.gpus, now, now + seconds, outcome.state.value,
                    trial.resources.cpus, trial.model_index))
        if decided.status.phase.is_finished and not running:
            return Simulation(procedure.name, now, gpu_seconds, tuple(records))
        if not running:
            if decided.actions:
                continue
            raise RuntimeError(f"the sweep is stuck: {decided.status.message}")
        end, _, trial_id, attempt = heapq.heappop(running)
        now = end
        done = [(trial_id, attempt)]
        while running and running[0][0] <= now:
            _, _, other, other_attempt = heapq.heappop(running)
            done.append((other, other_attempt))
        for key in done:
            tid, number = key
            attempts[tid] = [o for o in attempts[tid] if o.attempt != number]
            attempts[tid].append(finishing.pop(key))
    raise RuntimeError(f"no end after {max_passes} plan passes")


@dataclass(frozen=True, slots=True)
class LowerBound:
    """The physical limit of one procedure's sweep: see `lower_bound`."""

    work_seconds: float  # GPU-seconds of the trials that must run / GPUs in the cluster
    chain_seconds: float  # exclusive trials, back to back, + the longest lane's other trials
    must_run: int  # trials that must be launched (OOM rungs found by running included)
    exclusive: int  # of which nothing else can run beside

    @property
    def seconds(self) -> float:
        return max(self.work_seconds, self.chain_seconds)

    @property
    def hours(self) -> float:
        return self.seconds / 3600


def lower_bound(sweep: Sweep, procedure: Procedure, cost: Costs) -> LowerBound:
    """No schedule of the procedure's sweep, under the cost model, can finish before this.

    The trials that **must run** are, in each lane, those up to and including its first OOM
    rung, walking the ladder as the escalation rules do:
    - a trial the procedure predicts to run out of memory (`predicted_oom_fn`, when
      `predictOOM` is on) is its lane's OOM rung but costs nothing: it is recorded, not run;
    - a trial needing more than the whole cluster ends its lane and costs nothing (recorded
      as unschedulable);
    - a trial that fits the device runs to the end (`TrialCost.run_seconds`);
    - a trial that does not fit is the OOM rung: it runs until its OOM is found, by the
      procedure's own means (the probe step, or running until the failing batch);
    - with `onOOM: stop-lane` the lane ends at its OOM rung; with `continue` every rung that
      is not unschedulable must run.
    Retries, node failures and queueing are not modelled (neither does the simulator).

    Two limits hold for any schedule of those trials on their resources (each trial holds
    `demand(trial)` from start to end; a lane's trials run one after another):
    - **work**: the cluster cannot do more than its GPUs' worth of work at once, so the
      makespan is at least the must-run GPU-seconds / GPUs in the cluster;
    - **chain**: a trial that nothing else can run beside (**exclusive**: with it running, no
      other must-run trial's demand fits in the cluster, e.g. one that needs every GPU, or any
      trial when `parallelism` is 1) overlaps no other trial, so the exclusive trials take
      their sum of time on their own, and the longest lane's chain of its other must-run
      trials comes on top.
    The bound is the larger. It is for the trials as the spec shapes them: a schedule that
    gave a trial fewer or more GPUs would change its cost, and is another spec.
    """
    spec = procedure.spec
    grid = expand(sweep.model_copy(update={"spec": spec}))
    capacity = cost.cluster.capacity
    predictor = predicted_oom_fn(spec)
    stop_lane = spec.escalation.on_oom is OnOOM.STOP_LANE
    runs: list[tuple[int, Capacity, float]] = []  # (lane index, demand, seconds)
    for lane in grid.lanes:
        for trial in sorted(grid.trials[lane.name], key=lambda t: t.model_index):
            if predictor is not None and predictor(trial):
                if stop_lane:
                    break
                continue
            if unschedulable(trial, capacity):
                break
            c = cost.cost(spec, trial)
            seconds = c.run_seconds if c.fits else c.oom_seconds(
                procedure.oom_detection, procedure.oom_fraction_of_epoch)
            runs.append((lane.index, demand(trial), seconds))
            if not c.fits and stop_lane:
                break
    shapes = {need for _, need, _ in runs}
    exclusive_shapes = {
        need for need in shapes
        if spec.parallelism <= 1 or not any(need.plus(other).fits(capacity) for other in shapes)
    }
    work = sum(seconds * need.gpus for _, need, seconds in runs)
    exclusive = [seconds for _, need, seconds in runs if need in exclusive_shapes]
    chains: dict[int, float] = {}
    for lane_index, need, seconds in runs:
        if need not in exclusive_shapes:
            chains[lane_index] = chains.get(lane_index, 0.0) + seconds
    return LowerBound(
        work_seconds=work / capacity.gpus if capacity.gpus else 0.0,
        chain_seconds=sum(exclusive) + max(chains.values(), default=0.0),
        must_run=len(runs),
        exclusive=len(exclusive),
    )
