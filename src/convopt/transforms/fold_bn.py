"""Fold inference BatchNorm into the convolution before it: y = (W*x + b - mean) * g / sqrt(var + eps) + beta
becomes one conv with W' = W * s and b' = (b - mean) * s + beta, s = g / sqrt(var + eps) per channel.

The BatchNorm module is replaced by nn.Identity in place, so the model's own forward keeps working;
a pair is folded only when the conv's output feeds nothing but that BatchNorm and each is called once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convopt.transforms.config import StepRecord, TransformConfig, TransformContext, register_transform, set_submodule
from convopt.transforms.graph import module_call_counts, trace_graph

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class FoldBatchNormConfig(TransformConfig):
    """Fold every eval-mode BatchNorm that directly follows a selected conv into that conv."""


def fold_into_conv(conv: nn.Module, bn: nn.Module) -> None:
    """Rewrite conv's weight and bias so that conv alone computes bn(conv(x)) (bn in eval mode)."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype))
        old_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = ((old_bias - bn.running_mean) * scale + shift).to(conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(new_bias)


def _why_not(conv: nn.Module, bn: nn.Module, users: int, calls: dict[str, int], conv_name: str, bn_name: str) -> str | None:
    if bn.training:
        return "BatchNorm is in training mode (its statistics still change); call model.eval() first"
    if bn.running_mean is None:
        return "BatchNorm tracks no running statistics"
    if users != 1:
        return f"the conv output also feeds {users - 1} other node(s)"
    if calls.get(conv_name, 0) != 1 or calls.get(bn_name, 0) != 1:
        return "the conv or the BatchNorm is called more than once"
    if conv.out_channels != bn.num_features:
        return f"channel mismatch ({conv.out_channels} vs {bn.num_features})"
    return None


@register_transform(FoldBatchNormConfig)
def fold_batchnorm(model: nn.Module, config: FoldBatchNormConfig, context: TransformContext) -> StepRecord:
    record = StepRecord(config.to_dict())
    graph = trace_graph(model)
    calls = module_call_counts(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _NORMS):
            continue
        source = node.args[0] if node.args else None
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module"):
            continue
        conv = model.get_submodule(source.target)
        if not isinstance(conv, _CONVS) or not config.selects(source.target):
            continue
        reason = _why_not(conv, model.get_submodule(node.target), len(source.users), calls, source.target, node.target)
        if reason:
            record.skipped[f"{source.target} + {node.target}"] = reason
        else:
            pairs.append((source.target, node.target))
    for conv_name, bn_name in pairs:
        fold_into_conv(model.get_submodule(conv_name), model.get_submodule(bn_name))
        set_submodule(model, bn_name, nn.Identity())
        record.changed[conv_name] = f"folded {bn_name}"
    return record
