"""Channel dependency graph: which channels of which layers must be pruned together.

Every channel of every tensor in the fx-traced model gets a *channel variable*; ops that tie channels
together (a residual add, a channelwise SE multiply, a depthwise conv, a BatchNorm) unify the variables of
their operands (union-find). After the walk, a *unit* is one equivalence class: removing it removes, in
every layer that sees it, each index that carries one of its variables:

- conv / linear outputs: fresh variables (the producers);
- BatchNorm, activations, pooling, dropout, identity, StochasticDepth: the input's variables unchanged;
- add / sub / mul / div of tensors (residual adds, x * sigmoid(fc(pool(x)))): operands whose (broadcast)
  channel dim matches the output's are unified channel by channel;
- torch.cat along dim 1: the operands' variables side by side (channel offsets); along another dim:
  unified like an add;
- flatten(x, 1) into a Linear head: channel c of (N, C, *S) becomes features c*S .. c*S + S - 1;
- grouped convs (groups > 1, depthwise included): the input channels and output channels of one group
  form one unit, so pruning removes *whole groups* (a depthwise conv ties input channel k to output k).

Anything else on a channel path -- an op the walker does not know, a reshape with a hard-coded size, a
channel reduction, slicing, the model's inputs and outputs (the classifier's outputs are never pruned) --
*blocks* the variables it touches, with a reason; a unit containing a blocked variable is unprunable. So
an unknown op can only make pruning coarser, never produce a model with mismatched channels.

The model is traced in eval mode (dropout and stochastic depth are then identities); shapes come from
one forward pass on the example inputs (torch.fx ShapeProp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from convopt.spec import ConvSpec
from convopt.transforms.channel_walker import ChannelWalker, Layer
from convopt.transforms.graph import trace_graph


@dataclass
class Unit:
    """One group of coupled channels: `members[(layer, "in" | "out")]` are the indices it removes there."""

    root: int
    members: dict[tuple[str, str], list[int]]
    producers: tuple[str, ...]  # conv/linear layers whose outputs it removes

    @property
    def channels(self) -> int:
        """Channels it removes from its first producer (1 for a plain channel, the group width for groups)."""
        return len(self.members[(self.producers[0], "out")])


@dataclass
class DependencyGraph:
    """Result of `build_dependency_graph`: layers, prunable units and why the other channels are not."""

    layers: dict[str, Layer]
    units: dict[int, Unit]
    blocked: dict[str, str]  # producer layer -> reason (some of) its output channels cannot be pruned
    root_of: list[int]

    def kept(self, name: str, side: str, removed: set[int]) -> list[int]:
        """Indices of layer `name`'s "in" or "out" dim that survive removing the units `removed` (roots)."""
        layer = self.layers[name]
        variables = layer.in_vars if side == "in" else layer.out_vars
        return [i for i, v in enumerate(variables or []) if self.root_of[v] not in removed]


def build_dependency_graph(model: nn.Module, example_inputs: tuple[Any, ...]) -> DependencyGraph:
    """Trace `model` (raises UntraceableModelError naming the module) and group its coupled channels.

    Args:
        model: the model; traced in eval mode, its training flags are restored afterwards.
        example_inputs: positional inputs for one shape-propagation pass, e.g. (torch.rand(1, 3, 64, 64),).
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        graph = trace_graph(model)
        with torch.no_grad():
            ShapeProp(torch.fx.GraphModule(model, graph)).propagate(*example_inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode
    walker = ChannelWalker(model)
    for node in graph.nodes:
        walker.visit(node)
    root_of = [walker.find(v) for v in range(len(walker.parent))]
    for layer in walker.layers.values():
        layer.macs = sum(layer_macs(layer.module, s) for s in layer.input_shapes) if layer.kind != "norm" else 0
    members: dict[int, dict[tuple[str, str], list[int]]] = {}
    for layer in walker.layers.values():
        for side, variables in (("in", layer.in_vars), ("out", layer.out_vars)):
            for i, v in enumerate(variables or []):
                members.setdefault(root_of[v], {}).setdefault((layer.name, side), []).append(i)
    units, blocked = {}, {}
    for root, entries in members.items():
        producers = tuple(n for (n, side) in entries if side == "out" and walker.layers[n].kind != "norm")
        if not producers:
            continue  # channels of a model input: no layer makes them
        reason = walker.reason.get(root)
        if reason is None:
            units[root] = Unit(root, entries, producers)
        else:
            for n in producers:
                blocked.setdefault(n, reason)
    return DependencyGraph(walker.layers, units, blocked, root_of)


def layer_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one call of a conv (ConvSpec's closed form) or linear (batch dims x in x out) on input_shape."""
    if isinstance(module, nn.Linear):
        return math.prod(input_shape[:-1]) * module.in_features * module.out_features
    return ConvSpec.from_module(module).macs(input_shape)


__all__ = ["DependencyGraph", "Layer", "Unit", "build_dependency_graph", "layer_macs"]
