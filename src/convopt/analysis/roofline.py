"""Place layers on the roofline, and (with measurement) say how close each one gets to it.

For a layer doing M MACs while moving B bytes (intensity I = M / B, in MACs/byte), on a machine with
peak rate P (MACs/s) and bandwidth W (bytes/s): attainable rate = min(P, I x W); the layer is
compute-bound when I x W >= P. Layers without MACs (activations, pooling, normalisation) are
memory-bound by definition and are judged by the bandwidth they reach.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import torch
from torch import nn

from convopt.analysis.cost import LayerCost, layers_from_trace
from convopt.analysis.hardware import HardwareProfile
from convopt.analysis.trace import trace_forward


def place_on_roofline(layers: Sequence[LayerCost], hardware: HardwareProfile) -> None:
    """Fill bound, attainable rate and ideal time of each layer from the hardware profile."""
    bandwidth = hardware.bandwidth_gbs * 1e9
    for layer in layers:
        if layer.macs:
            peak = hardware.peak_macs_per_s(layer.dtype)
            attainable = min(peak, layer.arithmetic_intensity * bandwidth)
            layer.bound = "compute" if layer.arithmetic_intensity * bandwidth >= peak else "memory"
            layer.attainable_gmacs_per_s = attainable / 1e9
            layer.ideal_seconds = layer.macs / attainable
        else:
            layer.bound = "memory"
            layer.attainable_gmacs_per_s = None
            layer.ideal_seconds = layer.bytes / bandwidth


def _fill_measured(layer: LayerCost, seconds: float, hardware: HardwareProfile) -> None:
    layer.seconds = seconds
    if seconds <= 0:
        return
    layer.measured_gb_per_s = layer.bytes / seconds / 1e9
    if layer.macs:
        layer.measured_gmacs_per_s = layer.macs / seconds / 1e9
        layer.roofline_fraction = layer.measured_gmacs_per_s / layer.attainable_gmacs_per_s
    else:
        layer.roofline_fraction = layer.measured_gb_per_s / hardware.bandwidth_gbs


def measure_layers(model: nn.Module, inputs: tuple[Any, ...], layers: list[LayerCost], hardware: HardwareProfile,
                   *, warmup: int = 2, repeats: int = 7) -> float:  # fmt: skip
    """Time every layer (median over `repeats` timed passes) and the whole model; returns model latency (s).

    Per-layer times are taken around each op inside the dispatcher, so they exclude the Python
    bookkeeping of the trace itself; the whole-model latency is timed without any tracing.
    """
    place_on_roofline(layers, hardware)
    with torch.no_grad():
        for _ in range(warmup):
            model(*inputs)
    per_layer: list[list[float]] = [[] for _ in layers]
    for _ in range(repeats):
        trace, _ = trace_forward(model, inputs, timed=True)
        timed = layers_from_trace(trace)
        if [t.name for t in timed] != [layer.name for layer in layers]:
            raise RuntimeError("the model ran different layers on identical inputs; it cannot be timed per layer")
        for bucket, layer in zip(per_layer, timed):
            bucket.append(layer.seconds or 0.0)
    for layer, bucket in zip(layers, per_layer):
        _fill_measured(layer, statistics.median(bucket), hardware)
    latencies = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(*inputs)
            latencies.append(time.perf_counter() - start)
    return statistics.median(latencies)
