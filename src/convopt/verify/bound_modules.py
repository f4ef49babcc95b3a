"""Interval rules for nn.Module layers (call_module nodes), signed arithmetic, and argument checks.

Gowal et al. 2018 (IBP): affine layers in centre/radius form, monotone layers on both ends of the interval.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from convopt.verify.bound_rules import (
    ADD, AVERAGING_MODULES, DIV, ELEMENTWISE_MODULES, EXACT_MODULES, MUL, NEG, NOT_MONOTONE_HINT, SUB, Interval,
    _reduction_length,
)  # fmt: skip

if TYPE_CHECKING:
    from convopt.verify.bound_rules import Propagator

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_MAX_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MONOTONE_INTERPOLATION = {"nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area"}


def _cloned(module: nn.Module) -> Callable:
    """Call `module` on copies, so an in-place module (ReLU(inplace=True)) never edits a stored bound."""
    return lambda *a, **kw: module(*(t.clone() if isinstance(t, torch.Tensor) else t for t in a), **kw)


def module_rule(prop: Propagator, module: nn.Module, args: tuple, kwargs: dict) -> Any:
    x = args[0] if args else None
    if type(module).__module__.startswith("convopt.nn") and isinstance(x, Interval):
        from convopt.verify.bound_convopt import convopt_module_rule  # convopt's own layers (optimized models)

        return convopt_module_rule(prop, module, args, kwargs)
    if not isinstance(x, Interval):
        if any(isinstance(a, Interval) for a in (*args, *kwargs.values())):
            raise prop.fail("only the first input of a layer may vary")
        return module(*args, **kwargs)
    if isinstance(module, _ConvTransposeNd):
        if len(args) > 1 or kwargs:
            raise prop.fail("ConvTranspose with an explicit output_size")
        dims = len(module.kernel_size)
        weight, bias = prop.cast(module.weight), prop.cast(module.bias)
        call = lambda a, w, b: _CONV_TRANSPOSE[dims](a, w, b, module.stride, module.padding,  # noqa: E731
                                                      module.output_padding, module.groups, module.dilation)
        return prop.affine(call, x, weight, bias, math.prod(weight.shape) // weight.shape[1])
    if isinstance(module, _ConvNd):
        weight, bias = prop.cast(module.weight), prop.cast(module.bias)
        return prop.affine(module._conv_forward, x, weight, bias, math.prod(weight.shape[1:]))
    if isinstance(module, nn.Linear):
        return prop.affine(F.linear, x, prop.cast(module.weight), prop.cast(module.bias), module.in_features)
    if isinstance(module, _BatchNorm):
        return _batch_norm(prop, module, x)
    if isinstance(module, _DROPOUT) and module.training and module.p > 0:
        raise prop.fail("Dropout in training mode is random; call model.eval() first")
    if isinstance(module, _MAX_POOL) and module.return_indices:
        raise prop.fail("max pooling with return_indices=True")
    if isinstance(module, EXACT_MODULES):
        return prop.monotone(_cloned(module), args, kwargs)
    if isinstance(module, nn.PReLU):
        if bool((module.weight < 0).any()):
            raise prop.fail("PReLU with a negative slope is not monotone")
        weight = prop.cast(module.weight)
        return prop.monotone(lambda t: F.prelu(t, weight), args, kwargs, 2)
    if isinstance(module, ELEMENTWISE_MODULES):
        _check_monotone_parameters(prop, module)
        return prop.monotone(_cloned(module), args, kwargs, 4)
    if isinstance(module, AVERAGING_MODULES):
        if isinstance(module, nn.Upsample) and module.mode not in _MONOTONE_INTERPOLATION:
            raise prop.fail(f"Upsample mode {module.mode!r} has negative weights")
        fn = _cloned(module)
        kernel = getattr(module, "kernel_size", None)
        return prop.monotone(fn, args, kwargs, _reduction_length(fn, args, kwargs, kernel) + 1, "averaging")
    for kind, name in NOT_MONOTONE_HINT.items():
        if isinstance(module, kind):
            raise prop.fail(f"{name} is not monotone and has no interval rule yet; replace it with ReLU to certify")
    raise prop.fail("no interval rule for this layer type")


def _check_monotone_parameters(prop: Propagator, module: nn.Module) -> None:
    if isinstance(module, nn.LeakyReLU) and module.negative_slope < 0:
        raise prop.fail(f"LeakyReLU negative_slope {module.negative_slope} < 0 is not monotone")
    if isinstance(module, nn.ELU) and module.alpha < 0:
        raise prop.fail(f"ELU alpha {module.alpha} < 0 is not monotone")
    if isinstance(module, nn.Softplus) and module.beta <= 0:
        raise prop.fail(f"Softplus beta {module.beta} <= 0")


def _batch_norm(prop: Propagator, module: _BatchNorm, x: Interval) -> Interval:
    """Eval-mode BatchNorm is the per-channel affine map y = x * scale + shift."""
    if module.training or module.running_mean is None or module.running_var is None:
        raise prop.fail("BatchNorm in training mode (or without running statistics) depends on the batch; "
                        "call model.eval() first")  # fmt: skip
    channels = module.running_mean.numel()
    scale = prop.cast(module.running_var).add(module.eps).rsqrt()
    if module.weight is not None:
        scale = scale * prop.cast(module.weight)
    shift = -prop.cast(module.running_mean) * scale
    if module.bias is not None:
        shift = shift + prop.cast(module.bias)
    view = (1, channels, *([1] * (x.lower.dim() - 2)))
    scale, shift = scale.view(view), shift.view(view)
    centre, radius = (x.upper + x.lower) / 2, (x.upper - x.lower) / 2
    mid, rad = centre * scale + shift, radius * scale.abs()
    mean_term = (prop.cast(module.running_mean).view(view) * scale).abs()
    magnitude = (centre.abs() + radius) * scale.abs() + shift.abs() + mean_term
    return prop.widen(Interval(mid - rad, mid + rad), magnitude, 8)


def _lo(v: Any) -> Any:
    return v.lower if isinstance(v, Interval) else v


def _hi(v: Any) -> Any:
    return v.upper if isinstance(v, Interval) else v


def _magnitude(v: Any) -> Any:
    return torch.maximum(v.lower.abs(), v.upper.abs()) if isinstance(v, Interval) else abs(v)


def arithmetic_rule(prop: Propagator, fn: Callable, args: tuple, kwargs: dict) -> Interval:
    """Signed interval arithmetic: a + b, a - b, -a, a * b, a / constant."""
    if fn in NEG:
        (a,) = args
        return Interval(-a.upper, -a.lower)
    if len(args) != 2 or set(kwargs) - {"alpha"}:
        raise prop.fail(f"arguments {sorted(kwargs)} are not supported")
    a, b = args
    if "alpha" in kwargs:  # torch.add(a, b, alpha=s) is a + s * b
        b = arithmetic_rule(prop, operator.mul, (b, kwargs["alpha"]), {})
    if fn in ADD | SUB:
        if fn in ADD:
            result = Interval(_lo(a) + _lo(b), _hi(a) + _hi(b))
        else:
            result = Interval(_lo(a) - _hi(b), _hi(a) - _lo(b))
        return prop.widen(result, _magnitude(a) + _magnitude(b), 1)
    if fn in DIV:
        if isinstance(b, Interval):
            raise prop.fail("division by a varying tensor")
        if (torch.as_tensor(b) == 0).any():
            raise prop.fail("division by zero")
        candidates = [_lo(a) / b, _hi(a) / b]
    elif fn in MUL:
        candidates = [_lo(a) * _lo(b), _lo(a) * _hi(b), _hi(a) * _lo(b), _hi(a) * _hi(b)]
    else:
        raise prop.fail("no arithmetic rule")
    lower, upper = candidates[0], candidates[0]
    for value in candidates[1:]:
        lower, upper = torch.minimum(lower, value), torch.maximum(upper, value)
    return prop.widen(Interval(lower, upper), torch.maximum(lower.abs(), upper.abs()), 1)


def check_function(prop: Propagator, fn: Callable, args: tuple, kwargs: dict) -> None:
    """Reject the settings of otherwise supported functions that make them random or non-monotone."""
    def arg(position: int, name: str, default: Any) -> Any:
        return args[position] if len(args) > position else kwargs.get(name, default)

    if fn in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d) and arg(2, "training", True) and arg(1, "p", 0.5) > 0:
        raise prop.fail("functional dropout with training=True is random; call model.eval() first")
    if fn in (F.max_pool1d, F.max_pool2d, F.max_pool3d) and arg(6, "return_indices", False):
        raise prop.fail("max pooling with return_indices=True")
    if fn in (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d) and arg(2, "return_indices", False):
        raise prop.fail("max pooling with return_indices=True")
    if fn is F.leaky_relu and arg(1, "negative_slope", 0.01) < 0:
        raise prop.fail("leaky_relu with a negative slope is not monotone")
    if fn in (F.elu, F.celu) and arg(1, "alpha", 1.0) < 0:
        raise prop.fail("elu with alpha < 0 is not monotone")
    if fn is F.softplus and arg(1, "beta", 1.0) <= 0:
        raise prop.fail("softplus with beta <= 0")
    if fn is F.interpolate and arg(3, "mode", "nearest") not in _MONOTONE_INTERPOLATION:
        raise prop.fail(f"interpolation mode {arg(3, 'mode', 'nearest')!r} has negative weights")


__all__ = ["arithmetic_rule", "check_function", "module_rule"]
