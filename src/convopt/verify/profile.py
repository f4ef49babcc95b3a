"""Per-layer time with torch.profiler, the top bottlenecks, and a Chrome trace (chrome://tracing, Perfetto).

Every leaf module's forward is wrapped in a `record_function` range named ``layer::NAME`` (by forward
hooks), so the profiler's own aggregation gives each layer's time including the kernels it launched.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from convopt.errors import ConvoptError
from convopt.io import atomic_write_bytes

PREFIX = "layer::"
FORWARD = "convopt::forward"


@dataclass
class LayerTime:
    name: str
    kind: str
    milliseconds: float  # per forward pass (all calls of the layer in one pass)
    fraction: float  # of the whole forward pass
    calls: int  # per forward pass


@dataclass
class ProfileReport:
    forward_milliseconds: float  # per forward pass, under the profiler (a little above plain timing)
    repeats: int
    batch_size: int
    layers: list[LayerTime] = field(default_factory=list)  # slowest first
    bottlenecks: list[str] = field(default_factory=list)  # the `top` slowest layers
    trace_path: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "forward_milliseconds": self.forward_milliseconds, "repeats": self.repeats, "batch_size": self.batch_size,
            "layers": [dict(layer.__dict__) for layer in self.layers], "bottlenecks": list(self.bottlenecks),
            "trace_path": self.trace_path, "notes": list(self.notes),
        }  # fmt: skip


def _hook_layers(model: nn.Module) -> tuple[list, dict[str, str]]:
    handles, kinds, open_ranges = [], {}, {}

    def before(name: str):
        def hook(module: nn.Module, inputs: Any) -> None:
            scope = record_function(PREFIX + name)
            scope.__enter__()
            open_ranges.setdefault(name, []).append(scope)
        return hook

    def after(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            open_ranges[name].pop().__exit__(None, None, None)
        return hook

    try:
        for name, module in model.named_modules():
            if name and not any(True for _ in module.children()):
                kinds[name] = type(module).__name__
                handles.append(module.register_forward_pre_hook(before(name)))
                handles.append(module.register_forward_hook(after(name)))
    except (RuntimeError, AttributeError):  # TorchScript: no Python hooks, so whole-model time only
        kinds = {}
    return handles, kinds


def profile_model(model: nn.Module, x: torch.Tensor, *, repeats: int = 5, warmup: int = 2, top: int = 5,
                  trace_path: str | os.PathLike | None = None) -> ProfileReport:  # fmt: skip
    """Profile `repeats` forward passes of `model` on `x` (after `warmup` unprofiled ones).

    Args:
        trace_path: where to write the Chrome trace JSON (atomically); None for no file.
    """
    if repeats < 1 or warmup < 0:
        raise ConvoptError(f"repeats {repeats} and warmup {warmup}: expected repeats >= 1 and warmup >= 0")
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        handles, kinds = _hook_layers(model)
        try:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
            with profile(activities=activities) as prof:
                for _ in range(repeats):
                    with record_function(FORWARD):
                        model(x)
        finally:
            for handle in handles:
                handle.remove()
    totals = {event.key: event for event in prof.key_averages()}
    forward_us = totals[FORWARD].cpu_time_total / repeats if FORWARD in totals else 0.0
    report = ProfileReport(forward_milliseconds=forward_us / 1000, repeats=repeats, batch_size=len(x))
    for name, kind in kinds.items():
        event = totals.get(PREFIX + name)
        if event is None:  # a module the forward never called
            continue
        per_pass = event.cpu_time_total / repeats
        report.layers.append(LayerTime(name, kind, per_pass / 1000, per_pass / forward_us if forward_us else 0.0,
                                       event.count // repeats))  # fmt: skip
    report.layers.sort(key=lambda layer: layer.milliseconds, reverse=True)
    report.bottlenecks = [layer.name for layer in report.layers[:top]]
    if not kinds:
        report.notes.append("the model takes no forward hooks (TorchScript?): only whole-model time")
    if trace_path is not None:
        report.trace_path = str(_export_trace(prof, trace_path))
    return report


def _export_trace(prof: profile, path: str | os.PathLike) -> Path:
    """export_chrome_trace writes in place; go through a temp file so the target is never half-written."""
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(scratch))
        return atomic_write_bytes(path, scratch.read_bytes())


__all__ = ["LayerTime", "ProfileReport", "profile_model"]
