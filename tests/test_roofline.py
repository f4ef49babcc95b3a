"""Roofline placement (exact arithmetic on a synthetic machine) and per-layer measurement."""

from __future__ import annotations

import pytest
import torch

import convopt
from convopt.analysis.cost import LayerCost
from convopt.analysis.hardware import HardwareProfile
from convopt.analysis.roofline import place_on_roofline
from convopt.models import default_model


def synthetic_machine(fp32_gflops=200.0, bandwidth=25.0) -> HardwareProfile:
    return HardwareProfile(fingerprint={"id": "synthetic"}, peak_gflops={"fp32": fp32_gflops, "bf16": 4 * fp32_gflops},
                           bandwidth_gbs=bandwidth, threads=2, measured_at="now")  # fmt: skip


def layer(macs, bytes_read, bytes_written=0, dtype="float32") -> LayerCost:
    return LayerCost("l", "Conv2d", None, None, macs, 0, 0, bytes_read, bytes_written, dtype, [])


def test_ridge_point_separates_compute_from_memory_bound():
    machine = synthetic_machine()  # 100 GMAC/s / 25 GB/s -> ridge at 4 MACs/byte
    assert machine.ridge_point() == pytest.approx(4.0)
    low, high, elementwise = layer(3_000, 1_000), layer(5_000, 1_000), layer(0, 1_000, 1_000)
    place_on_roofline([low, high, elementwise], machine)
    assert (low.bound, high.bound, elementwise.bound) == ("memory", "compute", "memory")
    assert low.attainable_gmacs_per_s == pytest.approx(3.0 * 25.0)  # intensity x bandwidth
    assert high.attainable_gmacs_per_s == pytest.approx(100.0)  # the peak
    assert high.ideal_seconds == pytest.approx(5_000 / 100e9)
    assert elementwise.ideal_seconds == pytest.approx(2_000 / 25e9)


def test_bf16_layers_use_the_bf16_roof():
    machine = synthetic_machine()
    bf16 = layer(100_000, 1_000, dtype="bfloat16")
    place_on_roofline([bf16], machine)
    assert bf16.attainable_gmacs_per_s == pytest.approx(400.0)


def test_measure_fills_time_rate_and_fraction(quick_profile):
    report = convopt.analyze(default_model(), torch.rand(2, 1, 28, 28), hardware=quick_profile,
                             measure=True, repeats=3)  # fmt: skip
    assert report.latency_seconds > 0
    for row in report.layers:
        assert row.seconds > 0 and row.roofline_fraction > 0
        if row.macs:
            assert row.measured_gmacs_per_s == pytest.approx(row.macs / row.seconds / 1e9)
            assert row.roofline_fraction == pytest.approx(row.measured_gmacs_per_s / row.attainable_gmacs_per_s)
    assert report.energy.latency_source == "measured"


def test_measure_needs_a_profile():
    with pytest.raises(ValueError, match="hardware profile"):
        convopt.analyze(default_model(), torch.rand(1, 1, 28, 28), hardware=None, measure=True)
