"""The recipes users call. Every CLI command is a thin wrapper over one of these."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from convopt.analysis.cost import CostReport, layers_from_trace
from convopt.analysis.energy import (
    DEFAULT_GRID_G_PER_KWH, DEFAULT_WATTS_PER_CORE, estimate_energy, measure_rapl_joules, rapl_readable,
)  # fmt: skip
from convopt.analysis.hardware import HardwareProfile, load_or_measure
from convopt.analysis.roofline import measure_layers, place_on_roofline
from convopt.analysis.trace import trace_forward
from convopt.transforms.pipeline import apply, apply_, as_inputs  # noqa: F401  (apply/apply_ are public API)


def analyze(
    model: nn.Module,
    example_inputs: Any,
    *,
    name: str | None = None,
    hardware: HardwareProfile | str | None = "auto",
    measure: bool = False,
    threads: int | None = None,
    repeats: int = 7,
    watts_per_core: float = DEFAULT_WATTS_PER_CORE,
    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH,
    log: Callable[[str], None] | None = None,
) -> CostReport:
    """Exact cost of every layer of `model` on `example_inputs`, placed on this machine's roofline.

    Args:
        model: any nn.Module (run as given: put it in eval mode first for inference costs).
        example_inputs: a tensor or a tuple of positional inputs, e.g. torch.rand(1, 3, 224, 224).
        hardware: a HardwareProfile, "auto" (cached profile of this machine, measured if missing) or
            None (no roofline: bounds, energy and measurement are skipped).
        measure: time every layer (median of `repeats` passes) and report % of the attainable rate.
        threads: intra-op threads for measurement (default: torch's current setting).

    Example:
        >>> import torch, convopt
        >>> from convopt.models import default_model
        >>> report = convopt.analyze(default_model(), torch.rand(1, 1, 28, 28), hardware=None)
        >>> report.totals()["flops"] == 2 * report.macs
        True
    """
    inputs = as_inputs(example_inputs)
    if measure and hardware is None:
        raise ValueError("measure=True needs a hardware profile: pass hardware='auto' or a HardwareProfile")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        trace, _ = trace_forward(model, inputs)
        layers = layers_from_trace(trace)
        shapes = [list(x.shape) for x in inputs if isinstance(x, torch.Tensor)]
        report = CostReport(
            model=name or type(model).__name__,
            input_shape=shapes[0] if len(shapes) == 1 else shapes,
            layers=layers,
            params=sum(p.numel() for p in model.parameters()),
        )
        if hardware is None:
            return report
        profile = load_or_measure(torch.get_num_threads(), log=log) if hardware == "auto" else hardware
        report.hardware = profile
        place_on_roofline(layers, profile)
        rapl = None
        if measure:
            report.latency_seconds = measure_layers(model, inputs, layers, profile, repeats=repeats)
            if rapl_readable():
                with torch.no_grad():
                    rapl = measure_rapl_joules(lambda: model(*inputs), max(repeats, 10))
            latency, source = report.latency_seconds, "measured"
        else:
            latency, source = sum(layer.ideal_seconds or 0.0 for layer in layers), "roofline"
            report.notes.append("no --measure: latency and energy use roofline ideal times (lower bounds)")
        report.energy = estimate_energy(latency, source, profile.threads, watts_per_core=watts_per_core,
                                        grid_g_per_kwh=grid_g_per_kwh, rapl=rapl)  # fmt: skip
        return report
    finally:
        torch.set_num_threads(previous_threads)


def example_input(shape: Sequence[int], *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    """A deterministic example input in [0, 1) of `shape` (images are scaled to [0, 1] by convention)."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(tuple(shape), generator=generator, dtype=dtype).to(device)

