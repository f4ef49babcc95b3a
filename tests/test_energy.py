"""Energy: declared-power estimate arithmetic, CO2 conversion, and RAPL counters (on a fake sysfs)."""

from __future__ import annotations

import pytest

from convopt.analysis import energy


def test_declared_estimate_is_power_times_latency():
    e = energy.estimate_energy(0.010, "measured", 2, watts_per_core=5.0, grid_g_per_kwh=360.0)
    assert e.method == "declared-tdp" and "estimate" in e.assumption and "5 W per core" in e.assumption
    assert e.watts == 10.0
    assert e.joules_per_inference == pytest.approx(0.1)
    assert e.grams_co2_per_inference == pytest.approx(0.1 / 3.6e6 * 360.0)


def test_rapl_figure_is_used_when_given():
    e = energy.estimate_energy(0.010, "measured", 2, rapl=(0.5, 50.0))
    assert e.method == "rapl" and e.joules_per_inference == 0.5 and e.watts == 50.0


def test_bad_power_figures_are_rejected():
    with pytest.raises(ValueError, match="watts_per_core"):
        energy.estimate_energy(0.01, "measured", 2, watts_per_core=0.0)


def test_rapl_counters_with_wraparound(tmp_path):
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (domain / "max_energy_range_uj").write_text("1000000\n")
    (domain / "energy_uj").write_text("900000\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain (core): must not be double counted
    assert energy.rapl_readable(tmp_path)

    def run():  # the counter advances 200000 uJ across the range limit
        (domain / "energy_uj").write_text("100000\n")

    joules, watts = energy.measure_rapl_joules(run, iterations=2, root=tmp_path)
    assert joules == pytest.approx(0.2 / 2)
    assert watts > 0


def test_rapl_not_readable_without_counters(tmp_path):
    assert not energy.rapl_readable(tmp_path)
