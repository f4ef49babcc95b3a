"""The walker behind the channel dependency graph: what each fx op does to channel dim 1.

`ChannelWalker.visit(node)` gives every tensor node a list of channel variables (one per channel of
dim 1) and unifies the variables of coupled channels (union-find). The rules, op by op, are listed in
transforms/dependency.py; an op without a rule blocks every variable it touches, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)  # fmt: skip
_PASS_NAMES = {
    "relu", "relu_", "relu6", "silu", "gelu", "hardswish", "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "leaky_relu",
    "elu", "mish", "softplus", "hardtanh", "dropout", "dropout1d", "dropout2d", "dropout3d", "stochastic_depth",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "contiguous", "clone", "detach", "float", "to", "type_as", "neg", "abs", "exp", "clamp", "clip", "identity",
}  # fmt: skip
_ELEMENTWISE = {
    "add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv", "div", "div_", "itruediv",
}  # fmt: skip
_CATS = {"cat", "concat", "concatenate"}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}


@dataclass
class Layer:
    """A prunable module and the channel variable of every index of its channel dims.

    Attributes:
        kind: "conv", "linear" or "norm".
        in_vars: conv: one per input channel; linear: one per input feature; None for norms.
        out_vars: conv/linear: one per output channel/feature; norm: one per feature.
        input_shapes: the input shape of every call (for MACs and latency).
        macs: multiply-accumulates over all calls at the example inputs (0 for norms).
    """

    name: str
    module: nn.Module
    kind: str
    in_vars: list[int] | None
    out_vars: list[int]
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    macs: int = 0


class ChannelWalker:
    """Assigns channel variables to every fx node's dim 1 and unifies the coupled ones."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.parent: list[int] = []
        self.reason: dict[int, str] = {}  # root -> why its channels are unprunable
        self.maps: dict[torch.fx.Node, list[int]] = {}
        self.layers: dict[str, Layer] = {}

    # ---- union-find ---------------------------------------------------------------------------
    def fresh(self, count: int, reason: str | None = None) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        if reason:
            self.reason.update({v: reason for v in range(start, start + count)})
        return list(range(start, start + count))

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.reason:
                self.reason.setdefault(ra, self.reason.pop(rb))

    def block(self, variables: list[int], reason: str) -> None:
        for v in variables:
            self.reason.setdefault(self.find(v), reason)

    # ---- nodes --------------------------------------------------------------------------------
    def block_args(self, node: torch.fx.Node, reason: str) -> None:
        for arg in node.all_input_nodes:
            if arg in self.maps:
                self.block(self.maps[arg], reason)

    def visit(self, node: torch.fx.Node) -> None:
        shape = _shape(node)
        if node.op == "output":
            self.block_args(node, "reaches the model's output")
            return
        if node.op == "placeholder":
            if shape is not None and len(shape) >= 2:
                self.maps[node] = self.fresh(shape[1], "a model input")
            return
        if shape is None or len(shape) < 2:  # sizes, tuples, scalars: no channel dim of their own
            reads_channels = any(arg in self.maps for arg in node.all_input_nodes)
            if reads_channels and node.op != "get_attr" and not _is_size_query(node):
                self.block_args(node, f"feeds '{node.name}', whose result the walker cannot follow")
            return
        if node.op == "get_attr":
            return  # a constant: handled where it meets a channel path (see elementwise)
        out = self.rule(node, shape)
        if out is None:
            what = node.target if node.op == "call_module" else getattr(node.target, "__name__", str(node.target))
            reason = f"passes through '{node.name}' ({what}), which the dependency walker does not understand"
            self.block_args(node, reason)
            out = self.fresh(shape[1], reason)
        self.maps[node] = out

    def rule(self, node: torch.fx.Node, shape: tuple[int, ...]) -> list[int] | None:
        """The output's channel variables, or None when the op is not understood."""
        first = node.args[0] if node.args else None
        src = self.maps.get(first) if isinstance(first, torch.fx.Node) else None
        if node.op == "call_module":
            module = self.model.get_submodule(node.target)
            if type(module) in CONVS and src is not None:
                return self.conv(node.target, module, src, _shape(first), shape)
            if type(module) is nn.Linear and src is not None and len(shape) == 2:
                return self.linear(node.target, module, src, _shape(first))
            if type(module) in NORMS and src is not None and module.num_features == len(src):
                layer = self.layers.setdefault(node.target, Layer(node.target, module, "norm", None, src))
                self._tie(layer.out_vars, src)
                return src
            if isinstance(module, nn.Flatten) and src is not None:
                return self.flatten(src, _shape(first), shape, module.start_dim)
            if isinstance(module, _PASS_MODULES):
                return self.passthrough(src, first, shape)
            return None
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if name in _PASS_NAMES:
            return self.passthrough(src, first, shape)
        if name in _ELEMENTWISE:
            return self.elementwise(node, shape)
        if name in _CATS:
            return self.cat(node, shape)
        if name == "flatten" and src is not None:
            return self.flatten(src, _shape(first), shape, _arg(node, 1, "start_dim", 0))
        if name in ("view", "reshape") and src is not None:
            return self.reshape(node, src, _shape(first), shape)
        if name in _REDUCTIONS and src is not None:
            dims = _arg(node, 1, "dim", None)
            dims = [dims] if isinstance(dims, int) else dims
            rank = len(_shape(first))
            if dims and all(isinstance(d, int) and d % rank >= 2 for d in dims) and shape[1] == len(src):
                return src  # reduced over spatial dims only (keepdim or not): dim 1 is still the channels
        return None

    def _tie(self, a: list[int], b: list[int]) -> None:
        for x, y in zip(a, b, strict=True):
            self.union(x, y)

    def passthrough(self, src: list[int] | None, first: Any, shape: tuple[int, ...]) -> list[int] | None:
        in_shape = _shape(first) if isinstance(first, torch.fx.Node) else None
        if src is None or in_shape is None or len(in_shape) != len(shape) or len(src) != shape[1]:
            return None
        return src

    def conv(self, name: str, module: nn.Module, src: list[int], in_shape: tuple[int, ...], shape) -> list[int] | None:
        if len(in_shape) != module.weight.dim():  # unbatched call
            return None
        layer = self.layers.get(name)
        if layer is None:
            g, out_vars = module.groups, self.fresh(module.out_channels)
            in_g, out_g = module.in_channels // g, module.out_channels // g
            layer = self.layers[name] = Layer(name, module, "conv", list(src), out_vars)
            for k in range(g if g > 1 else 0):  # a group's inputs and outputs are removed together
                group = src[k * in_g : (k + 1) * in_g] + out_vars[k * out_g : (k + 1) * out_g]
                for v in group[1:]:
                    self.union(group[0], v)
        else:  # a module called again: the same weight index serves both inputs
            self._tie(layer.in_vars, src)
        layer.input_shapes.append(tuple(in_shape))
        return layer.out_vars

    def linear(self, name: str, module: nn.Module, src: list[int], in_shape: tuple[int, ...]) -> list[int]:
        layer = self.layers.get(name)
        if layer is None:
            layer = self.layers[name] = Layer(name, module, "linear", list(src), self.fresh(module.out_features))
        else:
            self._tie(layer.in_vars, src)
        layer.input_shapes.append(tuple(in_shape))
        return layer.out_vars

    def flatten(self, src: list[int], in_shape, shape, start_dim: int) -> list[int] | None:
        start = start_dim % len(in_shape)
        if start >= 2:
            return src if shape[1] == len(src) else None
        if start != 1 or shape[1] % len(src):
            return None
        repeat = shape[1] // len(src)  # channel c becomes features c*S .. c*S + S - 1
        return [v for v in src for _ in range(repeat)]

    def reshape(self, node: torch.fx.Node, src: list[int], in_shape, shape) -> list[int] | None:
        sizes = node.args[1:] if len(node.args) > 1 else node.kwargs.get("shape", ())
        sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
        # Only a batch-preserving flatten whose channel size is computed (-1 or from .size()) survives pruning.
        literal = [s for i, s in enumerate(sizes)
                   if isinstance(s, int) and s != -1 and not (i == 0 and s == in_shape[0])]  # fmt: skip
        if literal or len(shape) != 2 or shape[0] != in_shape[0]:
            return None
        return self.flatten(src, in_shape, shape, 1)

    def elementwise(self, node: torch.fx.Node, shape: tuple[int, ...]) -> list[int] | None:
        out: list[int] | None = None
        for arg in list(node.args) + list(node.kwargs.values()):
            if not isinstance(arg, torch.fx.Node) or _shape(arg) is None:
                continue
            arg_shape = _shape(arg)
            axis = 1 - (len(shape) - len(arg_shape))  # the operand's dim that broadcasts onto dim 1
            size = arg_shape[axis] if 0 <= axis < len(arg_shape) else 1
            if size == 1 and shape[1] != 1:
                continue  # broadcast along channels: no coupling
            if arg not in self.maps or axis != 1:
                return None  # a constant or odd-rank tensor scaled per channel: cannot be shrunk with it
            if out is None:
                out = self.maps[arg]
            else:
                self._tie(out, self.maps[arg])
        return out

    def cat(self, node: torch.fx.Node, shape: tuple[int, ...]) -> list[int] | None:
        parts = node.args[0] if node.args else node.kwargs.get("tensors", ())
        dim = _arg(node, 1, "dim", 0)
        if not all(isinstance(p, torch.fx.Node) and p in self.maps for p in parts):
            return None
        if dim % len(shape) == 1:
            return [v for p in parts for v in self.maps[p]]
        for p in parts[1:]:
            self._tie(self.maps[parts[0]], self.maps[p])
        return self.maps[parts[0]]


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is_size_query(node: torch.fx.Node) -> bool:
    return (node.op == "call_method" and node.target in ("size", "dim")) or (
        node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim", "dtype", "device"))


def _arg(node: torch.fx.Node, index: int, name: str, default: Any) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)
