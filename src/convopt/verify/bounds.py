"""Interval bound propagation (IBP): sound output bounds for every input in an L-infinity box.

Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust
Models" (arXiv:1810.12715). The model is traced with `torch.fx` so that residual adds, flattens and
other functional calls are seen as graph nodes, then an interval [lower, upper] is pushed through the
graph node by node: affine layers (conv, linear, eval-mode BatchNorm) in centre/radius form,
``W c + b +- |W| r``; monotone layers (ReLU and friends, pooling, reshapes) on both ends. The rules for
each node live in `convopt.verify.bound_rules`.

Soundness in floating point (``rounding=True``, the default): the propagation runs in the model's own
precision (float32 for half-precision models, whose CPU kernels accumulate in float32) and every rule
widens its interval by a worst-case rounding bound, a small multiple of gamma_k * magnitude with
gamma_k = k u / (1 - k u) (Higham, "Accuracy and Stability of Numerical Algorithms", s.3.1), covering both
the model's rounding and the propagation's own. The bounds therefore hold for the outputs the model actually
computes, not only for exact arithmetic. ``rounding=False`` runs in float64 without any slack: the bounds
of exact arithmetic, for hand checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from convopt.errors import ConvoptError, UnsupportedLayerError
from convopt.verify.bound_rules import Interval, Propagator


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    """The model as an fx GraphModule; torch.nn and convopt.nn layers stay single call_module nodes."""
    from convopt.errors import UntraceableModelError
    from convopt.transforms.graph import trace_graph

    if isinstance(model, torch.fx.GraphModule):
        return model
    try:
        return torch.fx.GraphModule(model, trace_graph(model))
    except UntraceableModelError as exc:
        raise UnsupportedLayerError(f"interval bounds cannot trace {type(model).__name__}: {exc}") from exc


def _check_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(eps, dtype=torch.float64, device=x.device)
    if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
        raise ConvoptError(f"eps {eps!r}: expected a finite, non-negative radius (a number or a tensor)")
    try:
        torch.broadcast_shapes(value.shape, x.shape)
    except RuntimeError:
        raise ConvoptError(f"eps of shape {tuple(value.shape)} does not broadcast to inputs {tuple(x.shape)}") from None
    return value


def _outward(bound: torch.Tensor, dtype: torch.dtype, down: bool) -> torch.Tensor:
    """Round a bound to `dtype`, moving it one step outwards wherever rounding moved it inwards."""
    rounded = bound.to(dtype)
    if torch.finfo(dtype).bits >= torch.finfo(bound.dtype).bits:
        return rounded
    wrong = rounded.double() > bound if down else rounded.double() < bound
    towards = torch.full_like(rounded, float("-inf") if down else float("inf"))
    return torch.where(wrong, torch.nextafter(rounded, towards), rounded)


def interval_bounds(
    model: nn.Module,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    *,
    input_range: tuple[float, float] | None = None,
    rounding: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of `model`'s output over the box ``|x' - x|_inf <= eps``.

    Supported: Conv1d/2d/3d and their transposes, Linear, BatchNorm (eval mode), ReLU and other monotone
    activations (ReLU6, LeakyReLU, ELU, SELU, Sigmoid, Tanh, Softplus, Hardsigmoid, ...), max/avg/adaptive
    pooling, flatten/view/reshape/cat, residual adds, subtraction and scaling by constants. Anything else
    raises `UnsupportedLayerError` naming the graph node.

    Args:
        model: an nn.Module in eval mode (BatchNorm and Dropout in training mode are rejected).
        x: (N, ...) inputs, the box centres.
        eps: the L-infinity radius, a number or a tensor that broadcasts to `x`.
        input_range: (low, high) to intersect the box with the valid input range, e.g. (0, 1) for images.
        rounding: widen each step by the model dtype's worst-case rounding error (see the module docstring);
            False gives the bounds of exact arithmetic.

    Returns:
        (lower, upper), each shaped like the model's output, in `x`'s dtype.

    Example:
        >>> import torch
        >>> lower, upper = interval_bounds(torch.nn.Linear(3, 2), torch.zeros(1, 3), 0.1)
        >>> bool((lower <= upper).all())
        True
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ConvoptError(f"interval bounds need a floating-point input tensor, got {type(x).__name__}")
    radius = _check_eps(eps, x)
    lower, upper = x.double() - radius, x.double() + radius
    if input_range is not None:
        low, high = input_range
        if not low < high:
            raise ConvoptError(f"input_range {input_range!r}: expected (low, high) with low < high")
        lower, upper = lower.clamp(low, high), upper.clamp(low, high)
    graph_module = _trace(model)
    half = x.dtype in (torch.float16, torch.bfloat16)
    work = (torch.float32 if half else x.dtype) if rounding else torch.float64
    stored_roundoff = torch.finfo(x.dtype).eps / 2 if half else 0.0
    with torch.no_grad():
        start = Interval(_outward(lower, work, down=True), _outward(upper, work, down=False))
        result = Propagator(graph_module, work, rounding, stored_roundoff).run(start)
    return _outward(result.lower, x.dtype, down=True), _outward(result.upper, x.dtype, down=False)


def certified_by_bounds(lower: torch.Tensor, upper: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the label's lower bound beats every other class's upper bound (so no input in the box flips it)."""
    true_lower = lower.gather(1, labels.view(-1, 1)).squeeze(1)
    others = upper.clone()
    others.scatter_(1, labels.view(-1, 1), float("-inf"))
    return true_lower > others.max(dim=1).values


@dataclass
class IBPReport:
    """IBP certification of one model at one radius."""

    eps: float
    num_samples: int
    clean_accuracy: float
    certified_accuracy: float  # fraction of all samples whose label is certified for the whole box
    mean_bound_width: float  # mean of upper - lower over all outputs: how loose the bounds are
    input_range: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps, "num_samples": self.num_samples, "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": self.certified_accuracy, "mean_bound_width": self.mean_bound_width,
            "input_range": list(self.input_range) if self.input_range else None, "notes": list(self.notes),
        }  # fmt: skip


def ibp_certify(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 256,
) -> IBPReport:
    """Certified accuracy at `eps`: the fraction of samples classified correctly on the whole eps-box.

    A certified sample is also correct on `x` itself, so certified accuracy never exceeds clean accuracy.
    """
    certified = correct = 0
    width_sum, width_count = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        lower, upper = interval_bounds(model, xb, eps, input_range=input_range)
        with torch.no_grad():
            correct += int((model(xb).argmax(dim=1) == yb).sum())
        certified += int(certified_by_bounds(lower, upper, yb).sum())
        width_sum += float((upper.double() - lower.double()).sum())
        width_count += upper.numel()
    total = max(len(x), 1)
    return IBPReport(eps=float(eps), num_samples=len(x), clean_accuracy=correct / total,
                     certified_accuracy=certified / total, mean_bound_width=width_sum / max(width_count, 1),
                     input_range=input_range)  # fmt: skip


__all__ = ["IBPReport", "Interval", "certified_by_bounds", "ibp_certify", "interval_bounds"]
