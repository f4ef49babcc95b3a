"""Channel importance for structured pruning: L1/L2 filter norms, BatchNorm scale, first-order Taylor.

Scores are computed per index of each layer's channel dims (`channel_scores`), divided by that dim's
mean so that layers of different scale compare, and averaged over every index a unit removes
(`unit_importance`): a unit that spans a residual stream is judged by all the layers it touches.

- "l1" / "l2": norm of the weight slice an index owns -- a conv's output filter W[k] and, for ungrouped
  convs and linears, the input slice W[:, k] of each consumer (Li et al. 2017, "Pruning filters for
  efficient ConvNets").
- "bn": |gamma| of the BatchNorms in the unit (Liu et al. 2017, "Network slimming"); units without a
  BatchNorm are scored by "l1", and the caller is told how many.
- "taylor": first-order Taylor estimate of the loss change when the slice is removed, (sum of w * dL/dw
  over the slice)^2 summed over calibration batches (Molchanov et al. 2019, "Importance estimation for
  neural network pruning"). Needs labelled batches (inputs, targets) and a loss (cross-entropy default).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from convopt.errors import ConfigError
from convopt.transforms.dependency import DependencyGraph, Layer

CRITERIA = ("l1", "l2", "bn", "taylor")
MAX_TAYLOR_BATCHES = 32  # first-order scores settle after a few hundred images; bounded cost

Scores = dict[tuple[str, str], torch.Tensor]  # (layer, "in" | "out") -> one score per index
LossFn = Callable[[nn.Module, Any], torch.Tensor]


def _slices(layer: Layer, tensor: torch.Tensor, side: str) -> torch.Tensor | None:
    """(indices, rest) view of a weight-shaped tensor along the layer's `side` dim; None if not scored."""
    if side == "out":
        return tensor.flatten(1)
    if layer.kind == "linear" or (layer.kind == "conv" and layer.module.groups == 1):
        return tensor.transpose(0, 1).flatten(1)
    return None  # grouped convs: the unit is the whole group, scored by its output filters


def norm_scores(graph: DependencyGraph, p: int) -> Scores:
    """Lp norm of each index's weight slice, for every conv/linear in and out dim."""
    scores: Scores = {}
    for name, layer in graph.layers.items():
        if layer.kind == "norm":
            continue
        w = layer.module.weight.detach().float()
        for side in ("in", "out"):
            view = _slices(layer, w, side)
            if view is not None:
                scores[(name, side)] = view.norm(p=p, dim=1)
    return scores


def bn_scores(graph: DependencyGraph) -> Scores:
    """|gamma| of every affine BatchNorm."""
    return {(n, "out"): l.module.weight.detach().abs().float() for n, l in graph.layers.items()
            if l.kind == "norm" and l.module.affine}  # fmt: skip


def cross_entropy_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Default Taylor loss: cross-entropy of model(inputs) against integer targets."""
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise ConfigError(
            "criterion='taylor' needs labelled calibration batches (inputs, targets); got "
            f"{type(batch).__name__}: pass a loader of (x, y) pairs or use criterion='l1'"
        )
    return F.cross_entropy(model(batch[0]), batch[1])


def taylor_scores(graph: DependencyGraph, model: nn.Module, calibration: Iterable[Any] | None,
                  loss_fn: LossFn | None = None, max_batches: int = MAX_TAYLOR_BATCHES) -> Scores:  # fmt: skip
    """Sum over batches of (sum over each index's slice of w * dL/dw)^2 (BatchNorm: gamma and beta terms)."""
    if calibration is None:
        raise ConfigError("criterion='taylor' needs data: pass calibration batches (x, y), or use criterion='l1'")
    loss_fn = loss_fn or cross_entropy_loss
    params = [(n, l, l.module.weight) for n, l in graph.layers.items()]
    params += [(n, l, l.module.bias) for n, l in graph.layers.items() if l.kind == "norm" and l.module.affine]
    params = [(n, l, p) for n, l, p in params if p is not None]
    flags = [p.requires_grad for _, _, p in params]
    modes = {m: m.training for m in model.modules()}
    scores: Scores = {}
    seen = 0
    try:
        model.eval()  # BatchNorm statistics must not move while we only measure gradients
        for _, _, p in params:
            p.requires_grad_(True)
        for batch in calibration:
            if seen >= max_batches:
                break
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, [p for _, _, p in params], allow_unused=True)
            per_index: Scores = {}
            for (name, layer, p), g in zip(params, grads):
                if g is None:
                    continue
                wg = (p.detach() * g).float()
                if layer.kind == "norm":  # gamma and beta of channel k
                    per_index[(name, "out")] = per_index.get((name, "out"), 0) + wg
                    continue
                for side in ("in", "out"):
                    view = _slices(layer, wg, side)
                    if view is not None:
                        per_index[(name, side)] = view.sum(dim=1)
            for key, value in per_index.items():
                scores[key] = scores.get(key, 0) + value.pow(2)
            seen += 1
    finally:
        for (_, _, p), flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise ConfigError("criterion='taylor' got no calibration batches: the calibration loader is empty")
    return scores


def unit_importance(graph: DependencyGraph, scores: Scores) -> dict[int, float]:
    """Mean normalised score over every scored index each unit removes; units with none are left out."""
    normalised = {}
    for key, s in scores.items():
        mean = float(s.mean()) if s.numel() else 0.0
        normalised[key] = (s / mean if mean > 0 else s).tolist()
    importance = {}
    for root, unit in graph.units.items():
        values = [normalised[key][i] for key, idx in unit.members.items() if key in normalised for i in idx]
        if values:
            importance[root] = sum(values) / len(values)
    return importance


def importance(graph: DependencyGraph, model: nn.Module, criterion: str, calibration: Any = None,
               loss_fn: LossFn | None = None) -> tuple[dict[int, float], list[str]]:  # fmt: skip
    """Importance of every prunable unit under `criterion` (one of CRITERIA), and notes for the report."""
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion={criterion!r}: use one of {CRITERIA}")
    notes: list[str] = []
    if criterion in ("l1", "l2"):
        result = unit_importance(graph, norm_scores(graph, 1 if criterion == "l1" else 2))
    elif criterion == "taylor":
        result = unit_importance(graph, taylor_scores(graph, model, calibration, loss_fn))
    else:
        result = unit_importance(graph, bn_scores(graph))
        missing = [r for r in graph.units if r not in result]
        if missing:
            fallback = unit_importance(graph, norm_scores(graph, 1))
            result.update({r: fallback[r] for r in missing if r in fallback})
            notes.append(f"criterion='bn': {len(missing)} unit(s) have no BatchNorm and were scored by their L1 norm")
    unscored = [r for r in graph.units if r not in result]
    if unscored:  # cannot happen for conv/linear producers; kept explicit rather than silently ranked
        result.update({r: float("inf") for r in unscored})
        notes.append(f"{len(unscored)} unit(s) had no scored weights and are never pruned")
    return result, notes
