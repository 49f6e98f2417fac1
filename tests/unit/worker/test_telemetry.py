"""Telemetry: merging workers' peaks, and the background sampler on a CPU-only machine."""

from __future__ import annotations

import time

import pytest
import torch

from worker.telemetry import Sampler, WorkerTelemetry, merge_telemetry


def test_merge_sums_devices_once_each() -> None:
    workers = [
        WorkerTelemetry(peak_rss_bytes=3, gpu_peak_bytes={"GPU-a": 10},
                        gpu_utilization={"GPU-a": 50}, torch_allocated_bytes=7,
                        torch_reserved_bytes=8),
        WorkerTelemetry(peak_rss_bytes=5, gpu_peak_bytes={"GPU-b": 30},
                        gpu_utilization={"GPU-b": 70}, torch_allocated_bytes=9,
                        torch_reserved_bytes=12),
        # A second worker on device a (not how Ladder places workers): counted once, its max.
        WorkerTelemetry(peak_rss_bytes=4, gpu_peak_bytes={"GPU-a": 20}),
    ]
    merged = merge_telemetry(workers)
    assert merged.gpu_memory_per_device == [20, 30]
    assert merged.total_gpu_memory_bytes == 50  # summed over devices, as the paper reports
    assert merged.peak_gpu_memory_bytes == 30
    assert merged.peak_host_memory_bytes == 5
    assert merged.mean_gpu_utilization == 60
    assert (merged.peak_torch_allocated_bytes, merged.peak_torch_reserved_bytes) == (9, 12)


def test_merge_cpu_only() -> None:
    merged = merge_telemetry([WorkerTelemetry(peak_rss_bytes=100), WorkerTelemetry(200)])
    assert merged.gpu_memory_per_device == [] and merged.total_gpu_memory_bytes is None
    assert merged.peak_host_memory_bytes == 200 and merged.peak_torch_allocated_bytes is None


def test_sampler_on_cpu() -> None:
    seen: list[int] = []
    with Sampler(torch.device("cpu"), interval=0.05, on_rss=seen.append) as sampler:
        time.sleep(0.3)
        snapshot = sampler.snapshot()
    assert len(seen) >= 3 and all(rss > 0 for rss in seen)
    assert snapshot.peak_rss_bytes >= max(seen) * 0.5
    assert snapshot.gpu_peak_bytes == {} and snapshot.torch_allocated_bytes is None
    assert not sampler._thread.is_alive()


# --- stand-ins for what needs a GPU: NVML and the CUDA caching allocator --------------------
# No GPU here: a fake NVML module and a fake allocator (named as stand-ins) drive the real
# lookup and bookkeeping code; tests/bench/run.py --gpu checks the same on a real device.


class _NvmlError(Exception):
    pass


class FakeNvml:
    """Stand-in for pynvml: GPUs by UUID, MIG instances reachable only under their parent
    (as NVML has it), and no utilisation on MIG (NVML_ERROR_NOT_SUPPORTED)."""

    def __init__(self, gpus: dict[str, list[str]]) -> None:
        self.gpus = gpus  # GPU UUID -> its MIG instances' UUIDs
        self.used: dict[str, int] = {u: 0 for g, migs in gpus.items() for u in [g, *migs]}

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if uuid not in self.gpus:  # MIG instances are not top-level devices
            raise _NvmlError("Not Found")
        return uuid

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return list(self.gpus)[index]

    def nvmlDeviceGetMaxMigDeviceCount(self, gpu: str) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, gpu: str, index: int) -> str:
        if index >= len(self.gpus[gpu]):
            raise _NvmlError("Not Found")
        return self.gpus[gpu][index]

    def nvmlDeviceGetUUID(self, handle: str) -> bytes:
        return handle.encode()

    def nvmlDeviceGetMemoryInfo(self, handle: str):
        return type("Memory", (), {"used": self.used[handle]})()

    def nvmlDeviceGetUtilizationRates(self, handle: str):
        if handle.startswith("MIG-"):
            raise _NvmlError("Not Supported")
        return type("Util", (), {"gpu": 40})()


GPU = "GPU-2f6b2c38-5d3a-4c1e-9d1a-3f0e6c1b2a11"
MIG = "MIG-8a1e0c77-1b2c-5d3e-9f00-112233445566"


@pytest.mark.parametrize(("torch_uuid", "expected"), [
    pytest.param(GPU, GPU, id="gpu-as-named"),
    pytest.param(GPU.removeprefix("GPU-"), GPU, id="gpu-without-prefix"),
    pytest.param(MIG, MIG, id="mig-as-named"),
    pytest.param(MIG.removeprefix("MIG-"), MIG, id="mig-without-prefix"),
    pytest.param("GPU-" + MIG.removeprefix("MIG-"), MIG, id="mig-printed-as-gpu"),
    pytest.param("GPU-00000000-0000-0000-0000-000000000000", None, id="unknown"),
])
def test_nvml_lookup_finds_gpus_and_mig_instances(torch_uuid: str, expected: str | None) -> None:
    from worker.telemetry import find_nvml_handle

    found = find_nvml_handle(FakeNvml({GPU: [], "GPU-other": [MIG]}), torch_uuid)
    assert (found[0] if found else None) == expected


class FakeAllocator:
    """Stand-in for the CUDA caching allocator's peak counters."""

    def __init__(self) -> None:
        self.allocated = self.reserved = 0
        self.resets = 0

    def use(self, allocated: int, reserved: int) -> None:
        self.allocated, self.reserved = max(self.allocated, allocated), max(self.reserved, reserved)

    def reset(self, device: object = None) -> None:
        self.allocated = self.reserved = 0
        self.resets += 1


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeNvml, FakeAllocator]:
    nvml, allocator = FakeNvml({"GPU-other": [MIG]}), FakeAllocator()
    props = type("Props", (), {"uuid": MIG.removeprefix("MIG-")})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: allocator.allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: allocator.reserved)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", allocator.reset)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return nvml, allocator


def test_each_epoch_reports_its_own_peak(fake_cuda: tuple[FakeNvml, FakeAllocator]) -> None:
    """Before, the allocator's peaks were never reset and the NVML peak was the run's: every
    epoch after a heavy one reported the heavy one's figure."""
    nvml, allocator = fake_cuda
    sampler = Sampler(torch.device("cuda", 0), nvml=nvml)  # no thread: samples by hand
    nvml.used[MIG] = 9_000  # the probe step: the run's peak
    allocator.use(7_000, 8_000)
    sampler.sample()
    peaks = []
    for used, allocated in ((6_000, 4_000), (5_000, 3_000)):
        sampler.new_epoch()
        nvml.used[MIG] = used
        allocator.use(allocated, allocated + 500)
        sampler.sample()
        nvml.used[MIG] = 1_000  # the epoch's end: memory given back
        sampler.sample()
        peaks.append(merge_telemetry([sampler.snapshot()]))
    assert [p.epoch_peak_gpu_memory_bytes for p in peaks] == [9_000, 5_000]  # 1: at its start
    assert [p.epoch_peak_torch_allocated_bytes for p in peaks] == [4_000, 3_000]
    assert [p.epoch_peak_torch_reserved_bytes for p in peaks] == [4_500, 3_500]
    # The run's peaks keep the probe's.
    assert peaks[-1].peak_gpu_memory_bytes == 9_000
    assert (peaks[-1].peak_torch_allocated_bytes, peaks[-1].peak_torch_reserved_bytes) == (
        7_000, 8_000)
    assert allocator.resets == 2
    # MIG: memory measured under its parent GPU, no utilisation (NVML has none there).
    assert peaks[-1].gpu_memory_per_device == [9_000] and peaks[-1].mean_gpu_utilization is None


def test_time_to_first_step_waits_for_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for CUDA's asynchrony: the wait is a device synchronize on CUDA only."""
    from worker.train import wait_for_device

    synced: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", synced.append)
    wait_for_device(torch.device("cpu"))
    assert synced == []
    wait_for_device(torch.device("cuda", 1))
    assert synced == [torch.device("cuda", 1)]
