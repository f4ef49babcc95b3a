"""The per-node rules of interval bound propagation (Gowal et al. 2018), walked over a torch.fx graph.

Three kinds of rule:
- affine with constant weights (conv, linear, eval BatchNorm): centre/radius form, mid = f(c), rad = |f|(r);
- monotone non-decreasing in every interval argument (ReLU, sigmoid, pooling, reshapes, cat, add): f(lower),
  f(upper);
- arithmetic with signs (sub, neg, mul, div by constants): the usual interval arithmetic.
Each rule also widens its result by 5 gamma_(k+4) * magnitude: the worst-case rounding error of a length-k
computation done by the model, plus that of the propagation itself, which runs in the same precision
(k = 0 for exact operations: max, ReLU, copies).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map

from convopt.errors import UnsupportedLayerError


@dataclass
class Interval:
    """Element-wise bounds lower <= value <= upper (tensors of one shape, in the propagation's dtype)."""

    lower: torch.Tensor
    upper: torch.Tensor


def _ends(tree: Any, end: str) -> Any:
    return tree_map(lambda v: getattr(v, end) if isinstance(v, Interval) else v, tree)


def _has_interval(tree: Any) -> bool:
    found = []
    tree_map(lambda v: found.append(v) if isinstance(v, Interval) else v, tree)
    return bool(found)


def _pair(lower: Any, upper: Any) -> Any:
    """Zip the results of a function applied to both ends back into Interval(s)."""
    if isinstance(lower, torch.Tensor):
        return Interval(lower, upper) if lower.is_floating_point() else lower
    if isinstance(lower, (tuple, list)):
        return type(lower)(_pair(lo, up) for lo, up in zip(lower, upper))
    return lower  # a shape or other constant computed from the interval: identical on both ends


def _maxabs(v: Any) -> Any:
    return torch.maximum(v.lower.abs(), v.upper.abs()) if isinstance(v, Interval) else abs(v)


# Exact monotone modules: f(lower), f(upper) with no rounding at all (selections, copies, max).
EXACT_MODULES = (
    nn.ReLU, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d,
    nn.ZeroPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
    nn.ReplicationPad2d, nn.ReplicationPad3d, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
)  # fmt: skip
# Monotone element-wise modules computed with a few roundings (libm-grade: a few ulp).
ELEMENTWISE_MODULES = (
    nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardsigmoid, nn.LogSigmoid,
    nn.Softsign,
)  # fmt: skip
AVERAGING_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                     nn.AdaptiveAvgPool3d, nn.Upsample)  # fmt: skip
NOT_MONOTONE_HINT = {nn.GELU: "GELU", nn.SiLU: "SiLU", nn.Hardswish: "Hardswish", nn.Mish: "Mish",
                     nn.Softmax: "Softmax", nn.LayerNorm: "LayerNorm", nn.GroupNorm: "GroupNorm"}  # fmt: skip

EXACT_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.hardtanh, torch.flatten, torch.reshape, torch.cat, torch.concat, torch.stack,
    torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute, torch.clamp, torch.clip, operator.getitem,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.pad, torch.chunk, torch.split, F.pixel_shuffle, F.pixel_unshuffle, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d,
}  # fmt: skip
ELEMENTWISE_FUNCTIONS = {F.leaky_relu, F.elu, F.celu, F.selu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
                         F.softplus, F.hardsigmoid, F.logsigmoid, F.softsign, torch.exp}  # fmt: skip
AVERAGING_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                       F.adaptive_avg_pool3d, torch.mean, torch.sum, F.interpolate}  # fmt: skip
AFFINE_FUNCTIONS = {F.linear, F.conv1d, F.conv2d, F.conv3d, torch.matmul, operator.matmul}
ADD = {operator.add, torch.add, operator.iadd}
SUB = {operator.sub, torch.sub, operator.isub}
MUL = {operator.mul, torch.mul, operator.imul}
DIV = {operator.truediv, torch.div, operator.itruediv}
NEG = {operator.neg, torch.neg}
INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}

EXACT_METHODS = {"view", "reshape", "flatten", "unflatten", "contiguous", "permute", "transpose", "squeeze",
                 "unsqueeze", "expand", "expand_as", "view_as", "reshape_as", "repeat", "chunk", "split", "clamp",
                 "clip", "relu", "narrow", "select", "__getitem__", "to"}  # fmt: skip
ELEMENTWISE_METHODS = {"sigmoid", "tanh", "exp"}
AVERAGING_METHODS = {"mean", "sum"}
SHAPE_METHODS = {"size", "dim", "numel", "ndimension"}
VIEW_LIKE = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "squeeze", "unsqueeze", "expand",
             "narrow", "select", "__getitem__", torch.flatten, torch.reshape, operator.getitem, torch.squeeze,
             torch.unsqueeze, torch.transpose, torch.permute}  # fmt: skip


class Propagator:
    """Walks a GraphModule, keeping an Interval (or a constant) per node."""

    def __init__(self, graph_module: torch.fx.GraphModule, dtype: torch.dtype, rounding: bool, stored_roundoff: float):
        """`dtype`: the precision the propagation runs in; `rounding`: account for rounding in that precision;
        `stored_roundoff`: unit roundoff of a lower-precision dtype each result is rounded to (0 if none)."""
        self.gm, self.dtype = graph_module, dtype
        self.u = torch.finfo(dtype).eps / 2 if rounding else 0.0
        self.tiny = torch.finfo(dtype).tiny if rounding else 0.0
        self.stored_u = stored_roundoff if rounding else 0.0
        self.modules = dict(graph_module.named_modules())
        self.node: torch.fx.Node | None = None

    def cast(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().to(self.dtype)

    # ---- helpers -------------------------------------------------------------------------------------
    def fail(self, reason: str) -> UnsupportedLayerError:
        node = self.node
        if node.op == "call_module":
            what = f"module {node.target!r} ({type(self.modules[node.target]).__name__})"
        elif node.op == "call_method":
            what = f"method .{node.target}()"
        else:
            what = f"function {getattr(node.target, '__name__', node.target)}"
        return UnsupportedLayerError(
            f"interval bounds cannot pass node {node.name!r}, {what}: {reason}; supported: conv, linear, eval "
            "BatchNorm, monotone activations, pooling, flatten/view/cat and residual adds"
        )

    def widen(self, iv: Interval, magnitude: torch.Tensor, k: float) -> Interval:
        """Widen by 5 gamma_(k+4) |magnitude|, which bounds the model's rounding error (gamma_k), the
        propagation's own (mid, radius and magnitude each within gamma_k, the centre/radius split within 2u)
        and the final rounding of lower/upper; plus 2 u_stored |magnitude| for a half-precision result."""
        if not self.u or not k:
            return iv
        steps = k + 4
        if steps * self.u >= 0.1:
            raise self.fail(f"a sum of {k} terms has no useful rounding bound in {self.dtype}")
        gamma = steps * self.u / (1 - steps * self.u)
        slack = (5 * gamma + 2 * self.stored_u) * magnitude + 5 * steps * self.tiny
        return Interval(iv.lower - slack, iv.upper + slack)

    def monotone(self, fn: Callable, args: tuple, kwargs: dict, k: float = 0, kind: str = "exact") -> Any:
        lower = fn(*_ends(args, "lower"), **_ends(kwargs, "lower"))
        upper = fn(*_ends(args, "upper"), **_ends(kwargs, "upper"))
        result = _pair(lower, upper)
        if not k or not isinstance(result, Interval):
            return result
        if kind == "averaging":  # f(|x|) bounds the sum of magnitudes an average or sum is made of
            magnitude = fn(*tree_map(_maxabs_tensor, args), **tree_map(_maxabs_tensor, kwargs)).abs()
        else:
            magnitude = torch.maximum(result.lower.abs(), result.upper.abs())
        return self.widen(result, magnitude, k)

    def affine(self, fn: Callable, x: Interval, weight: torch.Tensor, bias: torch.Tensor | None, k: int) -> Interval:
        """fn(x, weight, bias) linear in x: mid = fn(c, W, b), rad = fn(r, |W|, 0)."""
        centre, radius = (x.upper + x.lower) / 2, (x.upper - x.lower) / 2
        mid, rad = fn(centre, weight, bias), fn(radius, weight.abs(), None)
        result = Interval(mid - rad, mid + rad)
        if not self.u:
            return result
        magnitude = fn(centre.abs() + radius, weight.abs(), None)
        if bias is not None:
            magnitude = magnitude + _broadcast_bias(bias, magnitude).abs()
        return self.widen(result, magnitude, k + 2)

    # ---- the walk ------------------------------------------------------------------------------------
    def run(self, x: Interval) -> Interval:
        env: dict[torch.fx.Node, Any] = {}
        placeholders = 0
        for node in self.gm.graph.nodes:
            self.node = node
            load = lambda a: torch.fx.node.map_arg(a, lambda n: env[n])  # noqa: E731
            if node.op == "placeholder":
                placeholders += 1
                if placeholders == 1:
                    env[node] = x
                elif node.args:  # an optional argument: its default value
                    env[node] = node.args[0]
                else:
                    raise self.fail("interval bounds take models with a single tensor input")
            elif node.op == "get_attr":
                value = _attr(self.gm, node.target)
                floating = isinstance(value, torch.Tensor) and value.is_floating_point()
                env[node] = self.cast(value) if floating else value
            elif node.op == "output":
                result = load(node.args[0])
                if not isinstance(result, Interval):
                    raise self.fail(f"the model returns {type(result).__name__}; expected a single tensor")
                return result
            else:
                args, kwargs = load(node.args), load(node.kwargs)
                result = self.call(node, args, kwargs)
                if self.is_inplace(node, kwargs):  # later users of the input see the modified value
                    source = node.args[0]
                    if getattr(source, "op", None) in ("call_method", "call_function") and source.target in VIEW_LIKE:
                        raise self.fail("an in-place operation on a view of another tensor")
                    if isinstance(source, torch.fx.Node):
                        env[source] = result
                env[node] = result
        raise UnsupportedLayerError("the traced graph has no output node")

    def is_inplace(self, node: torch.fx.Node, kwargs: dict) -> bool:
        if node.op == "call_module":
            return bool(getattr(self.modules[node.target], "inplace", False))
        if node.op == "call_method":
            return node.target.endswith("_") and not node.target.startswith("__")
        return node.target in INPLACE_OPERATORS or bool(kwargs.get("inplace", False))

    def call(self, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_module":
            from convopt.verify.bound_modules import module_rule

            return module_rule(self, self.modules[node.target], args, kwargs)
        if not _has_interval((args, kwargs)):  # constants only: shape arithmetic and the like
            target = getattr(args[0], node.target) if node.op == "call_method" else node.target
            return target(*(args[1:] if node.op == "call_method" else args), **kwargs)
        if node.op == "call_method":
            return self.method(node.target, args, kwargs)
        return self.function(node.target, args, kwargs)

    def method(self, name: str, args: tuple, kwargs: dict) -> Any:
        base = name[:-1] if name.endswith("_") and not name.startswith("__") else name
        if base in SHAPE_METHODS:
            return getattr(_ends(args[0], "lower"), base)(*args[1:], **kwargs)
        casts = base in ("float", "double", "half", "bfloat16", "type_as")
        if casts or (base == "to" and any(isinstance(a, torch.dtype) for a in (*args[1:], *kwargs.values()))):
            return args[0]  # bounds stay in the propagation's dtype; rounding is accounted for by the slack
        arithmetic = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
                      "neg": operator.neg, "__add__": operator.add, "__radd__": operator.add}  # fmt: skip
        if base in arithmetic:
            return self.function(arithmetic[base], args, kwargs)
        table = {**dict.fromkeys(EXACT_METHODS, "exact"), **dict.fromkeys(ELEMENTWISE_METHODS, "elementwise"),
                 **dict.fromkeys(AVERAGING_METHODS, "averaging")}  # fmt: skip
        if base not in table:
            raise self.fail("not a method with a known monotone or affine interval rule")
        fn = lambda self_, *a, **kw: getattr(self_, base)(*a, **kw)  # noqa: E731
        kind = table[base]
        k = 0 if kind == "exact" else 4 if kind == "elementwise" else _reduction_length(fn, args, kwargs) + 1
        return self.monotone(fn, args, kwargs, k, kind)

    def function(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        from convopt.verify.bound_modules import arithmetic_rule, check_function

        if fn is getattr:
            return getattr(_ends(args[0], "lower"), args[1])  # .shape, .dtype, ...: identical on both ends
        if fn in ADD | SUB | MUL | DIV | NEG:
            return arithmetic_rule(self, fn, args, kwargs)
        if fn in AFFINE_FUNCTIONS:
            x, weight, *rest = args
            if not isinstance(x, Interval) or isinstance(weight, Interval) or _has_interval((rest, kwargs)):
                raise self.fail("only the first argument may vary (the weights must be constants)")
            bias = rest[0] if rest else kwargs.get("bias")
            call = lambda a, w, b: fn(a, w, b, *rest[1:], **{k: v for k, v in kwargs.items() if k != "bias"})  # noqa
            if fn in (torch.matmul, operator.matmul):
                call = lambda a, w, b: fn(a, w)  # noqa: E731
            return self.affine(call, x, weight, bias, _affine_length(weight, fn))
        check_function(self, fn, args, kwargs)
        if fn in EXACT_FUNCTIONS:
            return self.monotone(fn, args, kwargs)
        if fn in ELEMENTWISE_FUNCTIONS:
            return self.monotone(fn, args, kwargs, 4)
        if fn in AVERAGING_FUNCTIONS:
            return self.monotone(fn, args, kwargs, _reduction_length(fn, args, kwargs) + 1, "averaging")
        raise self.fail("not a function with a known monotone or affine interval rule")


def _maxabs_tensor(v: Any) -> Any:
    return _maxabs(v) if isinstance(v, Interval) else v


def _affine_length(weight: torch.Tensor, fn: Callable) -> int:
    """Terms summed per output: in_features (linear), in_channels/groups x kernel volume (conv), K (x @ W)."""
    if fn in (torch.matmul, operator.matmul):
        return int(weight.shape[-2] if weight.dim() >= 2 else weight.shape[0])
    return math.prod(weight.shape[1:])


def _broadcast_bias(bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-channel bias (C,) laid out against an (N, C, ...) or (N, ..., C) result."""
    if bias.dim() == 1 and like.dim() > 2 and like.shape[1] == bias.shape[0] and like.shape[-1] != bias.shape[0]:
        return bias.view(1, -1, *([1] * (like.dim() - 2)))
    return bias


def _reduction_length(fn: Callable, args: tuple, kwargs: dict, kernel: Any = None) -> int:
    """How many terms one output of an averaging op sums (an upper bound): the pooling kernel's volume when
    there is one, otherwise ceil(in/out) + 1 per spatial dimension (adaptive pooling, interpolation) or the
    size ratio (mean, sum)."""
    if kernel is None and fn in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
        kernel = args[1] if len(args) > 1 else kwargs["kernel_size"]
    if kernel is not None:
        if isinstance(kernel, (tuple, list)):
            return math.prod(kernel)
        return int(kernel) ** max(_ends(args[0], "lower").dim() - 2, 1)  # an int kernel applies to every dim
    lower = _ends(args[0], "lower")
    out = fn(*_ends(args, "lower"), **_ends(kwargs, "lower"))
    if out.dim() == lower.dim() and out.dim() > 2 and out.shape[:2] == lower.shape[:2]:
        return math.prod(math.ceil(i / max(o, 1)) + 1 for i, o in zip(lower.shape[2:], out.shape[2:]))
    return max(math.ceil(lower.numel() / max(out.numel(), 1)), 1)


def _attr(module: nn.Module, target: str) -> Any:
    for part in target.split("."):
        module = getattr(module, part)
    return module


__all__ = ["Interval", "Propagator"]
