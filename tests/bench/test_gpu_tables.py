"""The GPU benchmark's CPU-side logic: the peak-FLOP/s table (MFU's denominator)."""

from __future__ import annotations

import pytest

from tests.bench.test_bench_quick import load


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.0),  # SXM, as torch names it
    ("NVIDIA H100 NVL", 835.0),  # the SXM figure before: MFU understated by 16%
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA H200 NVL", 835.0),
    ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L4", None),  # unknown: no MFU rather than a made-up one
])
def test_peak_tflops_by_device_name(name: str, peak: float | None) -> None:
    assert load("gpu_ladder").peak_tflops_for(name) == peak
