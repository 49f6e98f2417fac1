"""Measured, not estimated: memory, utilisation and throughput of one trial.

Each Ray Train worker runs one `Sampler`, a daemon thread that wakes every half second to read
NVML (used memory and utilisation of the worker's GPU; absent on CPU) and the process's RSS.
It never touches CUDA streams, so training pays no host syncs for it. At the end of every
epoch the workers' snapshots are gathered on rank 0 and merged: GPU memory per device (by
NVML UUID, so two workers on one device count once), summed over devices as the paper
reports it, and host memory as the largest worker's peak RSS. (Throughput is counted by the
training loop itself: worker/train.py, `Progress`.)

Two GPU memory figures, kept side by side because they answer different questions:
- NVML "used" (`gpu_peak_bytes`, the AttemptResult's `peak_gpu_memory_bytes`): what the device
  had in use, sampled every half second. It includes the CUDA context (~0.5 GiB), cuBLAS and
  NCCL workspaces, the caching allocator's reserve, and any other process on the same device:
  the figure that must fit the card, and the one the paper reports.
- The caching allocator's peaks (`torch_allocated_bytes` = torch.cuda.max_memory_allocated,
  tensors only; `torch_reserved_bytes` = max_memory_reserved, what the allocator held from the
  driver): exact, not sampled, without the context. The gap between reserved and NVML used is
  the context and the libraries' workspaces.

Per epoch: `Sampler.new_epoch()` starts fresh peaks (NVML and the allocator's, with
`torch.cuda.reset_peak_memory_stats`, after `empty_cache` hands cached blocks back so NVML
sees this epoch's own use), so each epoch reports its own peak; the run's peaks (the probe
step's included) are kept across the resets.

NVML finds the worker's device by UUID, which both torch and NVML report. A MIG instance
(`MIG-...`, what the NVIDIA device plugin hands a pod under MIG) is not a top-level NVML
device: it is looked up under its parent GPU, and its utilisation, which NVML does not
support on MIG, is left out instead of failing the whole sample.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.memory import peak_rss_bytes, rss_bytes

__all__ = ["Sampler", "TrialTelemetry", "WorkerTelemetry", "merge_telemetry"]

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_SECONDS = 0.5


@dataclass
class WorkerTelemetry:
    """One worker's peaks so far (picklable: it travels between ranks)."""

    peak_rss_bytes: int = 0
    gpu_peak_bytes: dict[str, int] = field(default_factory=dict)  # NVML UUID -> bytes used
    gpu_utilization: dict[str, float] = field(default_factory=dict)  # NVML UUID -> mean %
    torch_allocated_bytes: int | None = None  # torch.cuda.max_memory_allocated, whole run
    torch_reserved_bytes: int | None = None  # torch.cuda.max_memory_reserved, whole run
    # The same peaks since the current epoch began (Sampler.new_epoch).
    epoch_gpu_peak_bytes: dict[str, int] = field(default_factory=dict)
    epoch_torch_allocated_bytes: int | None = None
    epoch_torch_reserved_bytes: int | None = None


@dataclass
class TrialTelemetry:
    """All workers' peaks merged into the figures an AttemptResult carries."""

    peak_host_memory_bytes: int | None = None
    gpu_memory_per_device: list[int] = field(default_factory=list)
    peak_gpu_memory_bytes: int | None = None
    total_gpu_memory_bytes: int | None = None
    mean_gpu_utilization: float | None = None
    peak_torch_allocated_bytes: int | None = None
    peak_torch_reserved_bytes: int | None = None
    # The current epoch's own peaks (max over devices / workers).
    epoch_peak_gpu_memory_bytes: int | None = None
    epoch_peak_torch_allocated_bytes: int | None = None
    epoch_peak_torch_reserved_bytes: int | None = None


def _max(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def merge_telemetry(workers: Sequence[WorkerTelemetry]) -> TrialTelemetry:
    per_device: dict[str, int] = {}
    utilization: dict[str, float] = {}
    for w in workers:
        for uuid, used in w.gpu_peak_bytes.items():
            per_device[uuid] = max(per_device.get(uuid, 0), used)
        utilization.update(w.gpu_utilization)
    allocated = [w.torch_allocated_bytes for w in workers if w.torch_allocated_bytes is not None]
    reserved = [w.torch_reserved_bytes for w in workers if w.torch_reserved_bytes is not None]
    devices = [per_device[uuid] for uuid in sorted(per_device)]
    return TrialTelemetry(
        peak_host_memory_bytes=max((w.peak_rss_bytes for w in workers), default=None) or None,
        gpu_memory_per_device=devices,
        peak_gpu_memory_bytes=max(devices) if devices else None,
        total_gpu_memory_bytes=sum(devices) if devices else None,
        mean_gpu_utilization=(
            sum(utilization.values()) / len(utilization) if utilization else None
        ),
        peak_torch_allocated_bytes=max(allocated) if allocated else None,
        peak_torch_reserved_bytes=max(reserved) if reserved else None,
        epoch_peak_gpu_memory_bytes=_max(
            [used for w in workers for used in w.epoch_gpu_peak_bytes.values()]),
        epoch_peak_torch_allocated_bytes=_max([w.epoch_torch_allocated_bytes for w in workers]),
        epoch_peak_torch_reserved_bytes=_max([w.epoch_torch_reserved_bytes for w in workers]),
    )


def _uuid_key(uuid: str) -> str:
    """A UUID as torch and NVML both mean it: no `GPU-`/`MIG-` prefix, lower case."""
    text = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def find_nvml_handle(nvml: Any, uuid: str) -> tuple[str, object] | None:
    """(NVML's UUID, handle) of the device torch calls `uuid`, a whole GPU or a MIG instance.

    torch prints a device's UUID without knowing whether it is a GPU or a MIG instance; NVML
    wants `GPU-...` or `MIG-...`, and finds MIG instances only under their parent GPU. Tried:
    the UUID as given and with either prefix, then every GPU and every MIG instance by UUID.
    """
    key = _uuid_key(uuid)
    for candidate in (uuid, f"GPU-{key}", f"MIG-{key}"):
        try:
            return candidate, nvml.nvmlDeviceGetHandleByUUID(candidate)
        except Exception:  # NVMLError_NotFound, or a MIG UUID this call does not take
            continue
    for index in range(int(nvml.nvmlDeviceGetCount())):
        gpu = nvml.nvmlDeviceGetHandleByIndex(index)
        devices = [gpu]
        try:
            for mig in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(gpu))):
                try:
                    devices.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, mig))
                except Exception:  # an empty MIG slot
                    continue
        except Exception:  # not MIG-capable
            pass
        for handle in devices:
            name = _text(nvml.nvmlDeviceGetUUID(handle))
            if _uuid_key(name) == key:
                return name, handle
    return None


class _Nvml:
    """NVML handles for this worker's CUDA devices; `available` is False on CPU."""

    def __init__(self, device: torch.device, nvml: Any = None) -> None:
        self.handles: dict[str, object] = {}
        self._utilization = True
        if device.type != "cuda":
            return
        try:
            if nvml is None:
                import pynvml as nvml

            nvml.nvmlInit()
            # NVML numbers all the node's GPUs and ignores CUDA_VISIBLE_DEVICES, so the
            # worker's device is found by UUID, which both sides agree on.
            found = find_nvml_handle(nvml, str(torch.cuda.get_device_properties(device).uuid))
            if found is None:
                raise LookupError("no NVML device has this device's UUID")
            self.handles[found[0]] = found[1]
            self._nvml = nvml
        except Exception as error:  # No driver library: measure what we can.
            log.warning("NVML unavailable, GPU memory comes from torch only: %s", error)
            self.handles.clear()

    def sample(self) -> dict[str, tuple[int, int | None]]:
        """UUID -> (bytes used, utilisation % or None where NVML has none, as on MIG)."""
        out: dict[str, tuple[int, int | None]] = {}
        for uuid, handle in self.handles.items():
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            util: int | None = None
            if self._utilization:
                try:
                    util = int(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except Exception:  # NVML_ERROR_NOT_SUPPORTED on MIG: memory still counts
                    self._utilization = False
            out[uuid] = (int(memory.used), util)
        return out


class Sampler:
    """A daemon thread sampling NVML and RSS every `interval` seconds (a context manager)."""

    def __init__(
        self,
        device: torch.device,
        *,
        interval: float = SAMPLE_INTERVAL_SECONDS,
        on_rss: Callable[[int], None] | None = None,
        nvml: Any = None,
    ) -> None:
        self.device = device
        self.interval = interval
        self.on_rss = on_rss
        self._nvml = _Nvml(device, nvml)
        self._gpu_peak: dict[str, int] = {}
        self._epoch_gpu_peak: dict[str, int] = {}
        # The allocator's peaks of epochs before the last reset (the probe's included).
        self._torch_allocated_before = 0
        self._torch_reserved_before = 0
        self._util_sum: dict[str, float] = {}
        self._util_count: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ladder-telemetry", daemon=True)

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as error:  # A sampler must never take training down.
                log.warning("telemetry sample failed: %s", error)

    def sample(self) -> None:
        rss = rss_bytes()
        if self.on_rss is not None:
            self.on_rss(rss)
        readings = self._nvml.sample()
        with self._lock:
            for uuid, (used, util) in readings.items():
                self._gpu_peak[uuid] = max(self._gpu_peak.get(uuid, 0), used)
                self._epoch_gpu_peak[uuid] = max(self._epoch_gpu_peak.get(uuid, 0), used)
                if util is not None:
                    self._util_sum[uuid] = self._util_sum.get(uuid, 0.0) + util
                    self._util_count[uuid] = self._util_count.get(uuid, 0) + 1

    def new_epoch(self) -> None:
        """Start the next epoch's own peaks; the run's peaks keep what came before."""
        if self.device.type == "cuda":
            self._torch_allocated_before = max(
                self._torch_allocated_before, torch.cuda.max_memory_allocated(self.device))
            self._torch_reserved_before = max(
                self._torch_reserved_before, torch.cuda.max_memory_reserved(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
            # Cached blocks go back to the driver, so NVML's "used" in this epoch is what this
            # epoch needed, not the largest reserve of any epoch before it.
            torch.cuda.empty_cache()
        with self._lock:
            self._epoch_gpu_peak.clear()
        self.sample()  # what is in use as the epoch begins is part of its peak

    def snapshot(self) -> WorkerTelemetry:
        with self._lock:
            peaks = dict(self._gpu_peak)
            epoch_peaks = dict(self._epoch_gpu_peak)
            util = {u: self._util_sum[u] / self._util_count[u] for u in self._util_count}
        allocated = reserved = None
        if self.device.type == "cuda":
            allocated = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
        return WorkerTelemetry(
            peak_rss_bytes=peak_rss_bytes(),
            gpu_peak_bytes=peaks,
            gpu_utilization=util,
            torch_allocated_bytes=(
                None if allocated is None else max(allocated, self._torch_allocated_before)),
            torch_reserved_bytes=(
                None if reserved is None else max(reserved, self._torch_reserved_before)),
            epoch_gpu_peak_bytes=epoch_peaks,
            epoch_torch_allocated_bytes=allocated,
            epoch_torch_reserved_bytes=reserved,
        )
