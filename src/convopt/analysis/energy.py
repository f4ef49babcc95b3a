"""Energy per inference and its CO2, with the assumption behind the figure always stated.

Where the kernel's RAPL counters (/sys/class/powercap/intel-rapl:*/energy_uj, also used by AMD) are
readable, energy is measured over repeated forward passes. Elsewhere (VMs, containers) it is estimated
as declared power per core x cores in use x latency, and labelled an estimate.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

DEFAULT_WATTS_PER_CORE = 5.0  # a declared figure: roughly a server core's share of its package TDP
DEFAULT_GRID_G_PER_KWH = 400.0  # a mid-range grid intensity; pass the user's own for a real figure
POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass
class EnergyEstimate:
    joules_per_inference: float
    watts: float
    method: str  # "rapl" (measured) or "declared-tdp" (estimate)
    assumption: str
    latency_seconds: float
    latency_source: str  # "measured" or "roofline" (ideal time, a lower bound)
    grid_g_per_kwh: float
    grams_co2_per_inference: float

    def to_dict(self) -> dict:
        return asdict(self)


def _package_domains(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1 and (p / "energy_uj").exists())


def rapl_readable(root: Path = POWERCAP_ROOT) -> bool:
    domains = _package_domains(root)
    try:
        return bool(domains) and all(int((d / "energy_uj").read_text()) >= 0 for d in domains)
    except (OSError, ValueError):
        return False


def _read_microjoules(domains: list[Path]) -> list[int]:
    return [int((d / "energy_uj").read_text()) for d in domains]


def measure_rapl_joules(run: Callable[[], None], iterations: int, root: Path = POWERCAP_ROOT) -> tuple[float, float]:
    """(joules per iteration, average watts) of `run`, from the package RAPL counters (wraparound handled)."""
    domains = _package_domains(root)
    ranges = [int((d / "max_energy_range_uj").read_text()) if (d / "max_energy_range_uj").exists() else 2**32
              for d in domains]  # fmt: skip
    before, start = _read_microjoules(domains), time.perf_counter()
    for _ in range(iterations):
        run()
    after, seconds = _read_microjoules(domains), time.perf_counter() - start
    micro = sum((a - b) % r for a, b, r in zip(after, before, ranges))
    joules = micro / 1e6
    return joules / iterations, joules / max(seconds, 1e-12)


def estimate_energy(latency_seconds: float, latency_source: str, threads: int, *,
                    watts_per_core: float = DEFAULT_WATTS_PER_CORE, grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH,
                    rapl: tuple[float, float] | None = None) -> EnergyEstimate:  # fmt: skip
    """Energy and CO2 per inference: from a RAPL measurement (joules, watts) when given, else declared TDP."""
    if watts_per_core <= 0 or grid_g_per_kwh < 0:
        raise ValueError(f"watts_per_core={watts_per_core} must be > 0 and grid_g_per_kwh={grid_g_per_kwh} >= 0")
    if rapl is not None:
        joules, watts = rapl
        method, assumption = "rapl", "measured from the CPU package's RAPL energy counters (whole package)"
    else:
        watts = watts_per_core * threads
        joules = watts * latency_seconds
        method = "declared-tdp"
        assumption = (f"estimate: {watts_per_core:g} W per core x {threads} cores x {latency_source} latency; "
                      "RAPL counters were not readable here")  # fmt: skip
    grams = joules / 3.6e6 * grid_g_per_kwh  # 1 kWh = 3.6e6 J
    return EnergyEstimate(joules, watts, method, assumption, latency_seconds, latency_source, grid_g_per_kwh, grams)
