"""Measured, not estimated: memory, utilisation and throughput of one trial.

Each Ray Train worker runs one `Sampler`, a daemon thread that wakes every half second to read
NVML (used memory and utilisation of the worker's GPU; absent on CPU) and the process's RSS.
It never touches CUDA streams, so training pays no host syncs for it. At the end of every
epoch the workers' snapshots are gathered on rank 0 and merged: GPU memory per device (by
NVML UUID, so two workers on one device count once), summed over devices as the paper
reports it, and host memory as the largest worker's peak RSS. (Throughput is counted by the
training loop itself: worker/train.py, `Progress`.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    torch_allocated_bytes: int | None = None  # torch.cuda.max_memory_allocated
    torch_reserved_bytes: int | None = None  # torch.cuda.max_memory_reserved


@dataclass
class TrialTelemetry:
    """All workers' peaks merged into the figures a TrialResult carries."""

    peak_host_memory_bytes: int | None = None
    gpu_memory_per_device: list[int] = field(default_factory=list)
    peak_gpu_memory_bytes: int | None = None
    total_gpu_memory_bytes: int | None = None
    mean_gpu_utilization: float | None = None
    peak_torch_allocated_bytes: int | None = None
    peak_torch_reserved_bytes: int | None = None


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
    )


class _Nvml:
    """NVML handles for this worker's CUDA devices; `available` is False on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.handles: dict[str, object] = {}
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            # NVML numbers all the node's GPUs and ignores CUDA_VISIBLE_DEVICES, so the
            # worker's device is found by UUID, which both sides agree on.
            uuid = str(torch.cuda.get_device_properties(device).uuid)
            name = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
            self.handles[name] = pynvml.nvmlDeviceGetHandleByUUID(name)
            self._nvml = pynvml
        except Exception as error:  # No driver library, MIG quirks: measure what we can.
            log.warning("NVML unavailable, GPU memory comes from torch only: %s", error)
            self.handles.clear()

    def sample(self) -> dict[str, tuple[int, int]]:
        """UUID -> (bytes used, utilisation %)."""
        out = {}
        for uuid, handle in self.handles.items():
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            out[uuid] = (int(memory.used), int(util.gpu))
        return out


class Sampler:
    """A daemon thread sampling NVML and RSS every `interval` seconds (a context manager)."""

    def __init__(
        self,
        device: torch.device,
        *,
        interval: float = SAMPLE_INTERVAL_SECONDS,
        on_rss: Callable[[int], None] | None = None,
    ) -> None:
        self.device = device
        self.interval = interval
        self.on_rss = on_rss
        self._nvml = _Nvml(device)
        self._gpu_peak: dict[str, int] = {}
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
                self._util_sum[uuid] = self._util_sum.get(uuid, 0.0) + util
                self._util_count[uuid] = self._util_count.get(uuid, 0) + 1

    def snapshot(self) -> WorkerTelemetry:
        with self._lock:
            peaks = dict(self._gpu_peak)
            util = {u: self._util_sum[u] / self._util_count[u] for u in self._util_count}
        cuda = self.device.type == "cuda"
        return WorkerTelemetry(
            peak_rss_bytes=peak_rss_bytes(),
            gpu_peak_bytes=peaks,
            gpu_utilization=util,
            torch_allocated_bytes=torch.cuda.max_memory_allocated(self.device) if cuda else None,
            torch_reserved_bytes=torch.cuda.max_memory_reserved(self.device) if cuda else None,
        )
