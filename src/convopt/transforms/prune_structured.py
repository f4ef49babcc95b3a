"""Structured channel pruning that physically shrinks layers (Li et al. 2017; dependency groups as in
Fang et al. 2023, "DepGraph: towards any structural pruning").

Steps: build the channel dependency graph (transforms/dependency.py), score every prunable unit
(transforms/importance.py), choose the units that bring the MAC / params / latency cost to the target
(transforms/prune_select.py), then replace each touched nn.Conv*/BatchNorm*/Linear by a smaller one
holding the kept weights. The model is run once afterwards; if that fails, the original layers are put
back and the error names the layer, so a model is never left half-pruned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from convopt.errors import ConfigError, UnsupportedLayerError
from convopt.timing import median_time
from convopt.transforms.config import set_submodule
from convopt.transforms.dependency import DependencyGraph, Layer, build_dependency_graph, layer_macs
from convopt.transforms.importance import LossFn, importance
from convopt.transforms.prune_config import PruneRecord
from convopt.transforms.prune_select import CostModel, select_global, select_uniform, spaces

if TYPE_CHECKING:
    from convopt.transforms.prune_config import PruneConfig


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def layer_costs(graph: DependencyGraph, target: str, repeats: int = 5) -> dict[str, float]:
    """Full-width cost of every conv/linear layer: MACs, weight count, or measured seconds per call."""
    costs = {}
    for name, layer in graph.layers.items():
        if layer.kind == "norm":
            continue
        if target == "macs":
            costs[name] = float(layer.macs)
        elif target == "params":
            costs[name] = float(layer.module.weight.numel())
        else:  # measured: the same layer at its example shapes, median of `repeats`
            w = layer.module.weight
            inputs = [torch.rand(s, dtype=w.dtype, device=w.device) for s in layer.input_shapes]
            costs[name] = sum(median_time(lambda x=x: layer.module(x), warmup=1, repeats=repeats).median_s
                              for x in inputs)  # fmt: skip
    return costs


def _group_check(name: str, keep: list[int], size: int, per_group: int) -> list[int]:
    """The kept group indices; every group must be kept or removed whole (the dependency graph's promise)."""
    groups = sorted({i // per_group for i in keep})
    if keep != [g * per_group + j for g in groups for j in range(per_group)]:
        raise UnsupportedLayerError(f"{name}: pruning would split a conv group ({len(keep)} of {size} kept)")
    return groups


def shrink_conv(name: str, conv: nn.Module, keep_in: list[int], keep_out: list[int]) -> nn.Module:
    """A conv of the same type with only the kept input/output channels (grouped: only whole groups)."""
    groups = conv.groups
    weight = conv.weight.detach()[keep_out]
    if groups > 1:
        kept = _group_check(name, keep_out, conv.out_channels, conv.out_channels // groups)
        if _group_check(name, keep_in, conv.in_channels, conv.in_channels // groups) != kept:
            raise UnsupportedLayerError(f"{name}: kept input and output groups differ")
        groups = len(kept)
    else:
        weight = weight[:, keep_in]
    new = type(conv)(len(keep_in), len(keep_out), conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, groups=groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype)  # fmt: skip
    _copy(new, conv, weight, keep_out)
    return new


def shrink_linear(linear: nn.Linear, keep_in: list[int], keep_out: list[int]) -> nn.Linear:
    new = nn.Linear(len(keep_in), len(keep_out), bias=linear.bias is not None, device=linear.weight.device,
                    dtype=linear.weight.dtype)  # fmt: skip
    _copy(new, linear, linear.weight.detach()[keep_out][:, keep_in], keep_out)
    return new


def shrink_norm(bn: nn.Module, keep: list[int]) -> nn.Module:
    ref = bn.weight if bn.weight is not None else bn.running_mean
    new = type(bn)(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats, device=ref.device, dtype=ref.dtype)  # fmt: skip
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if getattr(bn, attr) is not None:
                getattr(new, attr).copy_(getattr(bn, attr)[keep])
        if bn.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    for attr in ("weight", "bias"):
        if getattr(bn, attr) is not None:
            getattr(new, attr).requires_grad_(getattr(bn, attr).requires_grad)
    new.train(bn.training)
    return new


def _copy(new: nn.Module, old: nn.Module, weight: torch.Tensor, keep_out: list[int]) -> None:
    with torch.no_grad():
        new.weight.copy_(weight)
        if old.bias is not None:
            new.bias.copy_(old.bias.detach()[keep_out])
    new.weight.requires_grad_(old.weight.requires_grad)
    if old.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    new.train(old.training)


def _shrunk_shape(layer: Layer, shape: tuple[int, ...], width: int) -> tuple[int, ...]:
    axis = -1 if layer.kind == "linear" else 1
    resized = list(shape)
    resized[axis] = width
    return tuple(resized)


def shrink(model: nn.Module, graph: DependencyGraph, removed: set[int], record: PruneRecord,
           check_inputs: tuple[Any, ...]) -> None:  # fmt: skip
    """Replace every layer the removed units touch; fill record.layers / changed; roll back on failure."""
    replaced: dict[str, tuple[nn.Module, nn.Module]] = {}
    for name, layer in graph.layers.items():
        keep_out = graph.kept(name, "out", removed)
        keep_in = graph.kept(name, "in", removed) if layer.kind != "norm" else keep_out
        if len(keep_out) == len(layer.out_vars) and (layer.kind == "norm" or len(keep_in) == len(layer.in_vars)):
            continue
        if layer.kind == "conv":
            new = shrink_conv(name, layer.module, keep_in, keep_out)
        elif layer.kind == "linear":
            new = shrink_linear(layer.module, keep_in, keep_out)
        else:
            new = shrink_norm(layer.module, keep_out)
        replaced[name] = (layer.module, new)
        entry = {"kind": layer.kind, "out_before": len(layer.out_vars), "out_after": len(keep_out),
                 "params_before": _params(layer.module), "params_after": _params(new)}  # fmt: skip
        if layer.kind != "norm":
            macs_after = sum(layer_macs(new, _shrunk_shape(layer, s, len(keep_in))) for s in layer.input_shapes)
            entry.update(in_before=len(layer.in_vars), in_after=len(keep_in), macs_before=layer.macs,
                         macs_after=macs_after)  # fmt: skip
            record.changed[name] = (f"channels in {len(layer.in_vars)}->{len(keep_in)}, out {len(layer.out_vars)}->"
                                    f"{len(keep_out)}; MACs {layer.macs:,}->{macs_after:,}")  # fmt: skip
        else:
            record.changed[name] = f"features {len(layer.out_vars)}->{len(keep_out)}"
        record.layers[name] = entry
    for name, (_, new) in replaced.items():
        set_submodule(model, name, new)
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            model.eval()(*check_inputs)  # eval: the check must not move BatchNorm statistics
    except Exception as exc:
        for name, (old, _) in replaced.items():
            set_submodule(model, name, old)
        raise UnsupportedLayerError(
            f"the pruned model fails to run ({type(exc).__name__}: {exc}); the original layers were restored. "
            "Its forward likely uses a channel count the dependency graph could not see: exclude those layers "
            "with modules=..."
        ) from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
    record.macs_before = sum(l.macs for l in graph.layers.values())
    record.macs_after = sum(record.layers.get(n, {}).get("macs_after", l.macs) for n, l in graph.layers.items())


def prune_structured(model: nn.Module, config: "PruneConfig", example_inputs: tuple[Any, ...], *,
                     calibration: Any = None, loss_fn: LossFn | None = None,
                     log: Callable[[str], None] | None = None) -> PruneRecord:  # fmt: skip
    """Remove channels of `model` in place until `config.ratio` of the `config.target` cost is gone.

    Args:
        model: any fx-traceable model (UntraceableModelError names the module that is not).
        config: a PruneConfig with kind="structured".
        example_inputs: positional inputs, e.g. (torch.rand(1, 3, 224, 224),); MACs are counted at them.
        calibration: (x, y) batches, needed by criterion="taylor" only.
        loss_fn: loss(model, batch) -> scalar for "taylor" (default: cross-entropy against batch[1]).
    Returns:
        PruneRecord with per-layer channels / MACs / params before and after, and why others were kept.
    """
    log = log or (lambda message: None)
    record = PruneRecord(config.to_dict())
    params_before = sum(p.numel() for p in model.parameters())
    graph = build_dependency_graph(model, example_inputs)
    candidates = _candidates(graph, config, record)
    scores, notes = importance(graph, model, config.criterion, calibration, loss_fn)
    record.notes.extend(notes)
    cost = CostModel(graph, layer_costs(graph, config.target))
    full = cost.total(set())
    target = (1 - config.ratio) * full
    blocks, sizes = spaces(graph, candidates, scores, config.round_to, config.max_layer_ratio)
    if config.scope == "global":
        removed = select_global(cost, blocks, scores, target)
    else:
        removed = select_uniform(cost, blocks, sizes, scores, target)
    achieved = cost.total(removed) / full
    log(f"structured pruning: {len(removed)} of {len(graph.units)} channel groups removed, "
        f"{config.target} {achieved:.1%} left")  # fmt: skip
    shrink(model, graph, removed, record, example_inputs)
    record.params_before, record.params_after = params_before, sum(p.numel() for p in model.parameters())
    record.cost_fraction = achieved
    record.notes.append(f"{config.target}: {achieved:.1%} of the original left (asked {1 - config.ratio:.1%}); "
                        f"MACs {record.macs_before:,} -> {record.macs_after:,}; "
                        f"params {params_before:,} -> {record.params_after:,}")  # fmt: skip
    return record


def _candidates(graph: DependencyGraph, config: "PruneConfig", record: PruneRecord) -> list[int]:
    """Units whose producers the `modules` pattern selects; blocked layers go to record.skipped."""
    prunable = [n for n, layer in graph.layers.items() if layer.kind != "norm"]
    selected = [n for n in prunable if config.selects(n)]
    if not selected:
        more = ", ..." if len(prunable) > 12 else ""
        raise ConfigError(f"modules={config.modules!r} matches no conv/linear layer; layers are: "
                          f"{', '.join(prunable[:12])}{more}")  # fmt: skip
    for name, reason in graph.blocked.items():
        record.skipped[name] = f"output channels (partly) unprunable: {reason}"
    candidates = [r for r, u in graph.units.items() if all(config.selects(p) for p in u.producers)]
    if not candidates:
        why = "; ".join(f"{n}: {record.skipped.get(n, 'coupled to unselected layers')}" for n in selected[:5])
        raise ConfigError(f"modules={config.modules!r} selects {len(selected)} layer(s) but none has prunable "
                          f"output channels ({why}); widen the pattern")  # fmt: skip
    return candidates
