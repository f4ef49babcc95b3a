"""Graph fusion: drop identity ops, then fuse conv [+ residual add] + activation into single oneDNN calls.

Works on the torch.fx graph, so an activation module that a block calls twice (torchvision's ResNet
reuses `self.relu`) and a residual add written in `forward` can both be fused. The result is a new
GraphModule (use `convopt.apply`, not the in-place `apply_`); parameters keep their state-dict keys.
Run it after FoldBatchNormConfig so conv -> BN -> ReLU has become conv -> ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx
from torch import nn

from convopt.nn.fused import (
    ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES, ADD_FUNCTIONS, FusedConv, fusion_reason,
)  # fmt: skip
from convopt.transforms.config import StepRecord, TransformConfig, TransformContext, register_transform, set_submodule
from convopt.transforms.graph import module_call_counts, trace_graph


@dataclass(frozen=True)
class FuseConfig(TransformConfig):
    """Remove nn.Identity nodes and fuse selected convs with a following residual add and/or activation."""

    rewrites_graph: ClassVar[bool] = True


def _activation(node: torch.fx.Node, gm: torch.fx.GraphModule) -> tuple[str, list[float]] | None:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        entry = ACTIVATION_MODULES.get(type(module))
        return (entry[0], entry[1](module)) if entry else None
    if node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS and not node.kwargs:
        return ACTIVATION_FUNCTIONS[node.target], []
    if node.op == "call_method" and node.target in ACTIVATION_METHODS and len(node.args) == 1:
        return ACTIVATION_METHODS[node.target], []
    return None


def _is_add(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADD_FUNCTIONS and len(node.args) == 2 and not node.kwargs) or (
        node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2 and not node.kwargs
    )


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


@register_transform(FuseConfig)
def fuse_graph(model: nn.Module, config: FuseConfig, context: TransformContext) -> tuple[nn.Module, StepRecord]:
    record = StepRecord(config.to_dict())
    graph = trace_graph(model)
    gm = torch.fx.GraphModule(model, graph)
    for node in list(graph.nodes):  # identity modules left by BN folding cost a Python call each
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            record.notes.append(f"removed identity {node.target}")
    calls = module_call_counts(graph)
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.Conv2d):
            continue
        if not config.selects(node.target):
            continue
        reason = fusion_reason(gm.get_submodule(node.target))
        if reason is None and calls[node.target] != 1:
            reason = "the conv module is called more than once"
        user = _only_user(node)
        if reason is None and user is None:
            reason = f"the conv output feeds {len(node.users)} nodes"
        if reason:
            record.skipped[node.target] = reason
            continue
        add_node, other = None, None
        if _is_add(user) and user.args.count(node) == 1:
            other = user.args[1] if user.args[0] is node else user.args[0]
            if isinstance(other, torch.fx.Node):  # a constant addend stays a separate add
                add_node = user
                user = _only_user(add_node)
        activation = _activation(user, gm) if user is not None else None
        if add_node is None and activation is None:
            record.skipped[node.target] = "no add or activation follows it"
            continue
        unary, scalars = activation if activation else (None, [])
        set_submodule(gm, node.target, FusedConv(gm.get_submodule(node.target), unary, scalars, add=add_node is not None))
        last = user if activation else add_node
        if add_node is not None:
            add_node.prepend(node)  # the residual may be computed after the conv: run the fused call at the add
            node.args = (node.args[0], other)
        last.replace_all_uses_with(node)
        for dead in ([last, add_node] if activation and add_node is not None else [last]):
            graph.erase_node(dead)
        record.changed[node.target] = " + ".join(["conv"] + (["add"] if add_node is not None else []) + ([unary] if unary else []))
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, record
