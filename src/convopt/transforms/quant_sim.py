"""INT8 fake-quant simulation of a model: prepare, calibrate, measure per-layer error and sensitivity.

The simulation uses the deployed engine's scheme (per-channel symmetric int8 weights, per-tensor affine
uint8 inputs at every conv/linear; see convopt.nn.quant), so its per-layer figures explain the engine's
error, and its sensitivity ranking decides which layers mixed precision keeps in float.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from convopt.capture import capture_layers
from convopt.errors import CalibrationError, ConfigError
from convopt.kernels.observers import OBSERVERS
from convopt.nn.quant import QUANTIZABLE, FakeQuantConv, fake_quantize_weight
from convopt.testing import sqnr_db
from convopt.transforms.config import set_submodule

HIST_BINS = 32


def prepare_quant_sim(model: nn.Module, *, modules: str = "*", exclude: frozenset[str] = frozenset(),
                      observer: str = "minmax") -> nn.Module:  # fmt: skip
    """A deep copy of `model` with every selected conv/linear wrapped in a FakeQuantConv (not calibrated).

    Args:
        modules: fnmatch pattern of module names to quantize.
        exclude: module names to keep in float (mixed precision); each must name a module of the model.
        observer: activation observer, one of "minmax", "moving_average", "percentile", "mse", "entropy".
    Raises:
        ConfigError: unknown observer, an `exclude` name the model lacks, a pattern that selects nothing,
            or a model that is already a simulation.
    """
    if observer not in OBSERVERS:
        raise ConfigError(f"observer={observer!r}: use one of {', '.join(OBSERVERS)}")
    names = dict(model.named_modules())
    if any(isinstance(m, FakeQuantConv) for m in names.values()):
        raise ConfigError("the model already contains FakeQuantConv layers: prepare the float model instead")
    unknown = sorted(set(exclude) - set(names))
    if unknown:
        raise ConfigError(f"exclude names {unknown} are not modules of the model; known conv/linear layers: "
                          f"{[n for n, m in names.items() if type(m) in QUANTIZABLE][:12]}")  # fmt: skip
    selected = [n for n, m in names.items() if type(m) in QUANTIZABLE and fnmatch.fnmatch(n, modules)]
    if modules != "*" and not selected:
        raise ConfigError(f"modules={modules!r} selects no conv/linear layer of the model")
    sim = copy.deepcopy(model)
    for name in selected:
        if name not in exclude:
            set_submodule(sim, name, FakeQuantConv(sim.get_submodule(name), observer=observer))
    return sim


def quantized_layers(sim: nn.Module) -> dict[str, FakeQuantConv]:
    """The simulation's FakeQuantConv layers by qualified name, in model order."""
    return {name: m for name, m in sim.named_modules() if isinstance(m, FakeQuantConv)}


def _expected_shape(sim: nn.Module, accepted: tuple[int, ...] | None) -> str:
    if accepted is not None:
        return f"(N, {', '.join(map(str, accepted))}) like the batches before it"
    if hasattr(sim, "input_shape"):
        return f"(N, {', '.join(map(str, tuple(sim.input_shape)[1:]))})"
    for layer in sim.modules():
        if isinstance(layer, nn.Linear):
            return f"(N, ..., {layer.in_features}) (its first layer is Linear)"
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            spatial = ("L", "H, W", "D, H, W")[layer.weight.dim() - 3]
            return f"(N, {layer.in_channels}, {spatial}) (its first conv takes {layer.in_channels} channels)"
    return "the shape the model takes"


def calibrate(sim: nn.Module, batches: Iterable[torch.Tensor] | torch.Tensor,
              progress: Callable[[int, int], None] | None = None) -> None:  # fmt: skip
    """Run calibration batches through `sim` in eval mode, then fix every layer's input quantization.

    Observers start afresh at each call. A single Tensor counts as one batch.

    Args:
        batches: tensors of the model's input shape (N, ...), e.g. a list or a generator.
        progress: called as progress(batches_done, total) after each batch; total is 0 when unknown.
    Raises:
        CalibrationError: no batch at all, a non-tensor batch, a batch the model rejects (the message gives
            the expected and the received shape), or a layer that no batch reached.
    """
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    layers = quantized_layers(sim)
    total = len(batches) if hasattr(batches, "__len__") else 0
    for layer in layers.values():
        layer.start_observing()
    was_training, done, accepted = sim.training, 0, None
    sim.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                if not isinstance(batch, torch.Tensor):
                    raise CalibrationError(f"calibration batch {done} is a {type(batch).__name__}; pass tensors "
                                           "of the model's input shape (labels are not needed)")  # fmt: skip
                try:
                    sim(batch)
                except (RuntimeError, ValueError, IndexError) as exc:
                    raise CalibrationError(
                        f"calibration batch {done}: got shape {tuple(batch.shape)}, expected "
                        f"{_expected_shape(sim, accepted)}; the model rejected it ({str(exc).splitlines()[0]})"
                    ) from exc
                accepted = accepted or tuple(batch.shape[1:])
                done += 1
                if progress is not None:
                    progress(done, total)
        if done == 0:
            raise CalibrationError(
                f"the calibration set is empty: pass at least one batch of shape {_expected_shape(sim, None)}"
            )
        for name, layer in layers.items():
            layer.finish_observing(name)
    finally:
        for layer in layers.values():
            layer.observe = False
        sim.train(was_training)


def strip_quant_sim(sim: nn.Module) -> nn.Module:
    """A deep copy of `sim` with every FakeQuantConv replaced by its inner float layer (same weights)."""
    plain = copy.deepcopy(sim)
    for name in quantized_layers(plain):
        set_submodule(plain, name, plain.get_submodule(name).inner)
    return plain


def _histogram(values: torch.Tensor, bins: int = HIST_BINS) -> dict[str, list[float]]:
    values = values.detach().flatten().double()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1e-12  # a constant tensor: one bin holds everything
    counts, edges = torch.histogram(values, bins=bins, range=(low, high))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _capture_inputs(model: nn.Module, names: Iterable[str], inputs: tuple[Any, ...]) -> dict[str, tuple]:
    """(first input, output) of each named module over one forward pass of `model`."""
    try:
        return capture_layers(model, names, inputs)
    except AttributeError as exc:
        raise ConfigError("a layer of the simulation is not a module of the float model: pass the model the "
                          f"simulation was prepared from ({exc})") from exc  # fmt: skip


def layer_report(model: nn.Module, sim: nn.Module, inputs: torch.Tensor) -> list[dict[str, Any]]:
    """Per quantized layer of a calibrated `sim`: that layer alone quantized vs fp32, on its real input.

    Args:
        model: the float model `sim` was prepared from (in eval mode).
        sim: calibrated simulation (prepare_quant_sim + calibrate).
        inputs: a batch of the model's input (N, ...) or a tuple of positional inputs.
    Returns:
        One dict per layer, model order: name, kind, weight_sqnr_db, output_sqnr_db, cosine, max_abs_error,
        weight_range [min, max], act_range [min, max] (the real input seen), act_clip [low, high] (the
        calibrated int8 range), act_scale, act_zero_point, weight_hist / act_hist ({"edges", "counts"},
        32 bins), precision ("int8").
    """
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    layers = quantized_layers(sim)
    seen = _capture_inputs(model, layers, inputs)
    rows = []
    for name, layer in layers.items():
        if name not in seen:
            raise CalibrationError(f"layer {name!r} is not called when the model runs on these inputs")
        x, y_ref = seen[name]
        with torch.no_grad():
            weight = layer.inner.weight.detach()
            enabled, layer.enabled = layer.enabled, True
            try:
                y = layer(x)
            finally:
                layer.enabled = enabled
        cosine = F.cosine_similarity(y.flatten().double(), y_ref.flatten().double(), dim=0)
        rows.append({
            "name": name,
            "kind": type(layer.inner).__name__,
            "weight_sqnr_db": sqnr_db(weight, fake_quantize_weight(weight)),
            "output_sqnr_db": sqnr_db(y_ref, y),
            "cosine": float(cosine),
            "max_abs_error": float((y - y_ref).abs().max()) if y.numel() else 0.0,
            "weight_range": [float(weight.min()), float(weight.max())],
            "act_range": [float(x.min()), float(x.max())],
            "act_clip": list(layer.act_range()),
            "act_scale": float(layer.act_scale.detach()),
            "act_zero_point": int(layer.act_zero_point),
            "weight_hist": _histogram(weight),
            "act_hist": _histogram(x),
            "precision": "int8",
        })  # fmt: skip
    return rows


def single_layer_factory(sim: nn.Module) -> Callable[[str], nn.Module]:
    """For `sensitivity`: layer name -> a copy of the calibrated `sim` with only that layer quantized."""
    names = set(quantized_layers(sim))

    def only(name: str) -> nn.Module:
        if name not in names:
            raise ConfigError(f"{name!r} is not a quantized layer of the simulation; known: {sorted(names)[:12]}")
        one = copy.deepcopy(sim)
        for other, layer in quantized_layers(one).items():
            layer.enabled = other == name
        return one

    return only


def sensitivity(model: nn.Module, sim_factory: Callable[[str], nn.Module], evaluate: Callable[[nn.Module], float],
                layers: Iterable[str], *, inputs: torch.Tensor | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Task-metric drop when each layer alone is quantized, most sensitive first.

    Args:
        model: the float model.
        sim_factory: layer name -> a calibrated model with only that layer quantized
            (e.g. single_layer_factory(calibrated_sim)).
        evaluate: model -> task metric, higher is better (e.g. top-1 accuracy in %).
        layers: the layer names to probe.
        inputs: batch for the output SQNR; by default the first batch `evaluate` feeds the float model.
    Returns:
        Dicts with name, metric, baseline, drop (baseline - metric) and output_sqnr_db (final output of
        the model vs this layer-quantized model), sorted by drop, largest first; ties by lower SQNR.
    """
    captured: list[tuple] = []

    def grab(module, args):
        if not captured:
            captured.append(tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args))

    handle = model.register_forward_pre_hook(grab)
    try:
        baseline = float(evaluate(model))
    finally:
        handle.remove()
    probe = (tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)) if inputs is not None else None
    probe = probe or (captured[0] if captured else None)
    if probe is None:
        raise ConfigError("evaluate() never ran the model, so there is no batch for the output SQNR: pass inputs=")
    with torch.no_grad():
        reference = model(*probe)
    rows = []
    for name in layers:
        candidate = sim_factory(name)
        metric = float(evaluate(candidate))
        with torch.no_grad():
            output = candidate(*probe)
        rows.append({"name": name, "metric": metric, "baseline": baseline, "drop": baseline - metric,
                     "output_sqnr_db": sqnr_db(reference, output)})  # fmt: skip
    rows.sort(key=lambda r: (-r["drop"], r["output_sqnr_db"]))
    return rows


__all__ = [
    "calibrate", "layer_report", "prepare_quant_sim", "quantized_layers", "sensitivity", "single_layer_factory",
    "strip_quant_sim",
]  # fmt: skip
