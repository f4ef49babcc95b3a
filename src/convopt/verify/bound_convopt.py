"""Interval rules for convopt's own layers, so optimized models can be bounded too (Gowal et al. 2018).

- AlgoConv1d/2d/3d: the same affine map as the wrapped nn.ConvNd. Transform algorithms (Winograd, FFT)
  round differently from a direct sum: their error is bounded by the tolerance table's normwise limit
  times the largest |x| conv |w| (REFERENCES.md s.3), which is added to the usual rounding slack.
- FusedConv: conv [+ residual add] [+ monotone post-op], as the separate operations would be bounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from convopt.verify.bound_rules import Interval

if TYPE_CHECKING:
    from convopt.verify.bound_rules import Propagator

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MONOTONE_POST_OPS = {"relu", "hardtanh", "sigmoid", "tanh", "none", None}


def _spec_conv(spec: Any):
    """fn(x, w, b) computing the conv a ConvSpec describes, with per-side padding applied explicitly."""
    dims = len(spec.kernel_size)
    flat = [p for before, after in reversed(spec.padding) for p in (before, after)]
    mode = "constant" if spec.padding_mode == "zeros" else spec.padding_mode

    def conv(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        padded = F.pad(t, flat, mode=mode) if any(flat) else t
        return _CONV[dims](padded, w, b, spec.stride, 0, spec.dilation, spec.groups)

    return conv


def _algo_conv(prop: Propagator, module: nn.Module, x: Interval) -> Interval:
    from convopt.testing import normwise_limit

    weight, bias = prop.cast(module.weight), prop.cast(module.bias)
    result = prop.affine(_spec_conv(module.spec), x, weight, bias, int(torch.tensor(weight.shape[1:]).prod()))
    if getattr(module.algorithm, "error_kind", "elementwise") == "normwise" and prop.u:
        magnitude = _spec_conv(module.spec)(torch.maximum(x.lower.abs(), x.upper.abs()), weight.abs(), None)
        slack = 2 * normwise_limit(module.algorithm.name, module.weight.dtype) * magnitude.flatten(1).amax(dim=1)
        slack = slack.view(-1, *([1] * (magnitude.dim() - 1)))
        result = Interval(result.lower - slack, result.upper + slack)
    return result


def _fused_conv(prop: Propagator, module: nn.Module, args: tuple) -> Interval:
    from convopt.verify.bound_modules import arithmetic_rule

    x = args[0]
    weight, bias = prop.cast(module.weight), prop.cast(module.bias)

    def conv(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(t, w, b, module.stride, module.padding, module.dilation, module.groups)

    out = prop.affine(conv, x, weight, bias, int(torch.tensor(weight.shape[1:]).prod()))
    if module.add:
        out = arithmetic_rule(prop, torch.add, (out, args[1]), {})
    if module.unary in ("none", None):
        return out
    if module.unary == "relu":
        return Interval(out.lower.clamp(min=0), out.upper.clamp(min=0))
    if module.unary == "hardtanh":
        low, high = module.scalars
        return Interval(out.lower.clamp(low, high), out.upper.clamp(low, high))
    fn = torch.sigmoid if module.unary == "sigmoid" else torch.tanh
    return prop.monotone(fn, (out,), {}, 4)


def convopt_module_rule(prop: Propagator, module: nn.Module, args: tuple, kwargs: dict) -> Interval:
    from convopt.nn.conv import _AlgoConvNd
    from convopt.nn.fused import FusedConv

    if isinstance(module, _AlgoConvNd) and len(args) == 1 and not kwargs:
        return _algo_conv(prop, module, args[0])
    if isinstance(module, FusedConv) and not kwargs:
        if module.unary not in _MONOTONE_POST_OPS:
            raise prop.fail(f"fused post-op {module.unary!r} is not monotone")
        return _fused_conv(prop, module, args)
    raise prop.fail("no interval rule for this convopt layer")


__all__ = ["convopt_module_rule"]
