"""Telemetry: merging workers' peaks, and the background sampler on a CPU-only machine."""

from __future__ import annotations

import time

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
