"""Failure classification: which failures are out-of-memory, of which kind, and which are not.

A corpus of real-looking error texts (what backends read in logs) and exception chains (what
the worker catches from Ray Train), including near misses that mention memory but are
ordinary failures: a lane must never be capped by a bug, nor retried after a real OOM.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from ray.exceptions import OutOfMemoryError as RayOutOfMemoryError
from ray.train import ControllerError, WorkerGroupError
from ray.train.v2._internal.exceptions import (
    UserExceptionWithTraceback,
    WorkerHealthCheckFailedError,
)

from orchestrator.core.lifecycle import OOMKind, TrialState
from worker.memory import (
    HostMemoryBudget,
    MemoryBudgetExceeded,
    classify_failure,
    exception_chain,
    format_bytes,
)

OOM, FAILED = TrialState.OOM, TrialState.FAILED
GPU, HOST, BUDGET = OOMKind.GPU, OOMKind.HOST, OOMKind.BUDGET

CUDA_OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 79.10 GiB of which 1.12 GiB is free. Process 4711 has 77.97 GiB memory in use. "
    "Of the allocated memory 75.20 GiB is allocated by PyTorch, and 1.90 GiB is reserved by "
    "PyTorch but unallocated."
)
# The same allocator OOM when the budget's memory fraction capped it: torch adds "... allowed;".
CUDA_OOM_CAPPED = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 79.10 GiB of which 52.12 GiB is free. Process 4711 has 26.97 GiB memory in use. "
    "24.00 GiB allowed; Of the allocated memory 21.20 GiB is allocated by PyTorch, and 1.90 GiB "
    "is reserved by PyTorch but unallocated."
)
CUDA_OOM_PREEMPTIVE = (
    "torch.OutOfMemoryError: CUDA out of memory. Allocation was preemptively rejected because it "
    "would exceed per_process_memory_fraction limit. Requested size: 2.00 GiB"
)
# A cudaMalloc outside the caching allocator, through C10_CUDA_CHECK.
CUDA_ERROR_OOM = (
    "RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously "
    "reported at some other API call, so the stacktrace below might be incorrect.\nFor "
    "debugging consider passing CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to "
    "enable device-side assertions."
)
NCCL = (
    "torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/"
    "NCCLUtils.cpp:77, unhandled cuda error (run with NCCL_DEBUG=INFO for details), NCCL "
    "version 2.27.5\nncclUnhandledCudaError: Call to CUDA function failed.\nLast error:\n{last}"
)
RAY_MEMORY_MONITOR = (
    "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\n"
    "Memory on the node (IP: 10.0.3.7, ID: 5c0f...) where the task (actor ID: 9a1c..., name="
    "RayTrainWorker.__init__, pid=3131) was running was 30.12GB / 31.35GB (0.960786), which "
    "exceeds the memory usage threshold of 0.95."
)
WORKER_SIGKILL = (
    "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
    "\tclass_name: RayTrainWorker\n\tpid: 812\n"
    "The actor's worker process exited with signal SIGKILL."
)
CPU_ALLOCATOR = (
    "RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
    "allocate memory: you tried to allocate 17179869184 bytes. Error code 12 (Cannot allocate "
    "memory)"
)


@pytest.mark.parametrize(
    ("text", "budget_set", "expected"),
    [
        pytest.param(CUDA_OOM, False, (OOM, GPU), id="cuda-allocator"),
        pytest.param(CUDA_OOM_CAPPED, True, (OOM, BUDGET), id="cuda-allocator-under-budget"),
        pytest.param(CUDA_OOM_PREEMPTIVE, True, (OOM, BUDGET), id="cuda-allocator-preemptive"),
        # A budget above the card sets no fraction: the card ran out, not the budget.
        pytest.param(CUDA_OOM, True, (OOM, GPU), id="cuda-allocator-budget-not-binding"),
        pytest.param(CUDA_OOM_CAPPED, False, (OOM, GPU), id="cuda-allocator-capped-no-budget"),
        pytest.param(CUDA_ERROR_OOM, False, (OOM, GPU), id="cuda-error-out-of-memory"),
        pytest.param(CUDA_ERROR_OOM, True, (OOM, GPU), id="cuda-error-out-of-memory-budget-set"),
        pytest.param(NCCL.format(last="Cuda failure 'out of memory'"), False, (OOM, GPU),
                     id="nccl-cuda-failure-oom"),
        pytest.param(NCCL.format(last="Cuda failure 2 'out of memory'"), False, (OOM, GPU),
                     id="nccl-cuda-failure-2-oom"),
        pytest.param("ncclUnhandledCudaError: Call to CUDA function failed. (cudaMalloc: out of "
                     "memory)", False, (OOM, GPU), id="nccl-unhandled-oom-text"),
        pytest.param("RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED", False, (OOM, GPU),
                     id="cudnn-alloc"),
        pytest.param("RuntimeError: CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling "
                     "`cublasCreate(handle)`", False, (OOM, GPU),
                     id="cublas-create-not-initialized"),
        pytest.param("RuntimeError: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)",
                     False, (OOM, GPU), id="cublas-alloc"),
        pytest.param(RAY_MEMORY_MONITOR, False, (OOM, HOST), id="ray-memory-monitor"),
        pytest.param(RAY_MEMORY_MONITOR, True, (OOM, HOST), id="ray-memory-monitor-budget-set"),
        pytest.param("Back-off restarting failed container; last state: Terminated, reason: "
                     "OOMKilled, exit code 137", False, (OOM, HOST), id="k8s-oomkilled"),
        pytest.param(WORKER_SIGKILL, False, (OOM, HOST), id="worker-sigkill"),
        pytest.param(CPU_ALLOCATOR, False, (OOM, HOST), id="cpu-allocator"),
        pytest.param("worker.memory.MemoryBudgetExceeded: 412.0 MiB used on cpu (measured after "
                     "the probe step on the longest batch) exceeds the memory budget of 160.0 MiB",
                     False, (OOM, BUDGET), id="budget-text"),
        # Near misses: memory is mentioned, nothing ran out of it.
        pytest.param("ValueError: memory_budget must be a quantity such as '24Gi'", False,
                     (FAILED, None), id="value-error-about-memory"),
        pytest.param("KeyError: 'out_of_memory_threshold'", False, (FAILED, None),
                     id="identifier-containing-out-of-memory"),
        pytest.param("RuntimeError: shared memory segment too small (pin_memory)", False,
                     (FAILED, None), id="shared-memory"),
        pytest.param("AssertionError: expected peak memory to be reported", True, (FAILED, None),
                     id="assertion-about-memory-budget-set"),
        pytest.param("RuntimeError: CUDA error: device-side assert triggered", False,
                     (FAILED, None), id="cuda-error-not-oom"),
        pytest.param(NCCL.format(last="Cuda failure 'invalid device ordinal'"), False,
                     (FAILED, None), id="nccl-unhandled-not-oom"),
        pytest.param("RuntimeError: CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling "
                     "`cublasGemmEx(handle, ...)`", False, (FAILED, None),
                     id="cublas-execution-failed"),
        pytest.param("RuntimeError: CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling "
                     "`cublasLtMatmul(ltHandle, ...)`", False, (FAILED, None),
                     id="cublas-not-initialized-not-create"),
        pytest.param("ray.exceptions.ActorDiedError: The actor died because its node was "
                     "removed from the cluster (preempted)", False, (FAILED, None),
                     id="actor-died-not-killed"),
        pytest.param("", False, (FAILED, None), id="empty"),
    ],
)
def test_texts(text: str, budget_set: bool, expected: tuple[TrialState, OOMKind | None]) -> None:
    assert classify_failure(text, budget_set=budget_set) == expected


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    """`error` as it is caught after `raise error from cause`."""
    try:
        raise error from cause
    except BaseException as caught:
        return caught


def _raised_during(error: BaseException, context: BaseException) -> BaseException:
    """`error` as it is caught when raised while handling `context`."""
    try:
        try:
            raise context
        except BaseException:
            raise error  # noqa: B904 - the implicit __context__ is what is tested
    except BaseException as caught:
        return caught


def _budget() -> MemoryBudgetExceeded:
    return MemoryBudgetExceeded("building the model", 38 * 2**20, 2**20)


def _torch_oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _torch_oom_capped() -> torch.OutOfMemoryError:
    """As torch raises it when the budget's memory fraction capped the allocator."""
    return torch.OutOfMemoryError(CUDA_OOM_CAPPED.removeprefix("torch.OutOfMemoryError: "))


def _worker_group(*failures: BaseException) -> WorkerGroupError:
    return WorkerGroupError("[Rank 0 Error Snippet]: ...", dict(enumerate(failures)))


@pytest.mark.parametrize(
    ("make", "budget_set", "expected"),
    [
        pytest.param(_budget, False, (OOM, BUDGET), id="budget-bare"),
        pytest.param(lambda: _worker_group(_budget(), _budget()), True, (OOM, BUDGET),
                     id="budget-in-worker-group"),
        pytest.param(lambda: _worker_group(ValueError("rank 0 fine"), _torch_oom()), False,
                     (OOM, GPU), id="gpu-oom-on-rank-1"),
        pytest.param(lambda: _worker_group(_torch_oom_capped()), True, (OOM, BUDGET),
                     id="gpu-oom-under-budget"),
        pytest.param(lambda: _worker_group(_torch_oom()), True, (OOM, GPU),
                     id="gpu-oom-budget-not-binding"),
        pytest.param(lambda: _worker_group(RuntimeError(CUDA_ERROR_OOM.removeprefix(
            "RuntimeError: "))), False, (OOM, GPU), id="cuda-error-oom-runtime-error"),
        pytest.param(lambda: ControllerError(_worker_group(_torch_oom())), False, (OOM, GPU),
                     id="controller-wraps-worker-group"),
        pytest.param(lambda: _worker_group(UserExceptionWithTraceback(_budget(), "Traceback...")),
                     False, (OOM, BUDGET), id="user-exception-with-traceback"),
        pytest.param(lambda: _worker_group(WorkerHealthCheckFailedError(
            "worker unhealthy", RayOutOfMemoryError("Task was killed due to the node running "
                                                    "low on memory."))),
                     False, (OOM, HOST), id="health-check-ray-oom"),
        pytest.param(lambda: _raised_from(RuntimeError("step failed"), _torch_oom()), False,
                     (OOM, GPU), id="gpu-oom-as-cause"),
        pytest.param(lambda: _raised_during(RuntimeError("cleanup failed"), _budget()), False,
                     (OOM, BUDGET), id="budget-as-context"),
        pytest.param(lambda: MemoryError(), False, (OOM, HOST), id="python-memory-error"),
        pytest.param(lambda: RuntimeError(CPU_ALLOCATOR), False, (OOM, HOST),
                     id="cpu-allocator-runtime-error"),
        # Near misses.
        pytest.param(lambda: ValueError("memory budget 24Gx is not a quantity"), True,
                     (FAILED, None), id="value-error-mentions-memory"),
        pytest.param(lambda: _worker_group(KeyError("out_of_memory")), False, (FAILED, None),
                     id="key-error-named-like-oom"),
        pytest.param(lambda: _raised_from(RuntimeError("NaN loss"), ValueError("bad batch")),
                     False, (FAILED, None), id="ordinary-chain"),
        pytest.param(lambda: ControllerError(RuntimeError("placement group timed out")), False,
                     (FAILED, None), id="controller-error"),
    ],
)
def test_exceptions(make, budget_set: bool, expected: tuple[TrialState, OOMKind | None]) -> None:
    assert classify_failure(make(), budget_set=budget_set) == expected


class _FakeCuda:
    """Stand-in for a GPU (none here): the card's size and what the budget asked of torch."""

    def __init__(self, total: int) -> None:
        self.total, self.fractions = total, []

    def get_device_properties(self, device):
        return type("Props", (), {"total_memory": self.total})()

    def set_per_process_memory_fraction(self, fraction, device) -> None:
        self.fractions.append(fraction)


@pytest.mark.parametrize(("budget", "total", "expected", "set_"), [
    (20 * 2**30, 80 * 2**30, 0.25, [0.25]),
    (80 * 2**30, 80 * 2**30, 1.0, []),   # exactly the card: nothing to cap
    (200 * 2**30, 80 * 2**30, 1.0, []),  # the budget exceeds the card: no fraction at all
])
def test_cuda_budget_sets_a_fraction_only_when_it_binds(monkeypatch, budget, total, expected,
                                                        set_) -> None:
    """A fraction set at 1.0 would still make torch print "allowed", and an OOM of the card
    would be labelled a budget OOM; so a budget that does not bind sets nothing."""
    from worker import memory

    fake = _FakeCuda(total)
    monkeypatch.setattr(memory.torch, "cuda", fake)
    assert memory.apply_cuda_budget(budget, torch.device("cuda", 0)) == expected
    assert fake.fractions == set_


def test_chain_walk_terminates_on_cycles() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert list(exception_chain(a)) == [a, b]


def test_budget_exception_survives_pickle() -> None:
    """It crosses from the Ray worker to the driver by pickle, with its figures."""
    error = pickle.loads(pickle.dumps(_budget()))
    assert isinstance(error, MemoryBudgetExceeded)
    assert (error.used_bytes, error.budget_bytes, error.stage) == (
        38 * 2**20, 2**20, "building the model")
    assert "38.0 MiB used on cpu (measured after building the model)" in str(error)


def test_host_budget_raises_on_growth() -> None:
    budget = HostMemoryBudget(8 * 2**20)
    budget.check("nothing yet")  # a few KiB of noise at most
    hog = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    with pytest.raises(MemoryBudgetExceeded, match="measured after the hog"):
        budget.check("the hog")
    del hog


def test_host_budget_counts_a_sampled_peak() -> None:
    """A transient peak the sampler saw counts, although the memory is free again."""
    budget = HostMemoryBudget(2**30, warm_up=False)
    budget.observe(budget.baseline_bytes + 3 * 2**30)
    with pytest.raises(MemoryBudgetExceeded, match=r"3\.0 GiB used on cpu"):
        budget.check("a transient peak")


def test_host_budget_none_only_measures() -> None:
    budget = HostMemoryBudget(None, warm_up=False)
    assert budget.check("anything") >= 0


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1536, "1.5 KiB"), (160 * 2**20, "160.0 MiB"),
                                         (24 * 2**30, "24.0 GiB")])
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text
