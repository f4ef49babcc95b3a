"""Unstructured magnitude pruning and N:M patterns: selected weights become exact zeros, shapes stay.

- "unstructured": the `ratio` fraction of weights with the smallest score is zeroed -- per layer
  (scope="layer": exactly round(ratio * numel) in each layer) or over all selected layers together
  (scope="global": exactly round(ratio * total), so layers end up with different sparsities). Score:
  |w| (criterion "l1"/"l2" agree for single weights; Han et al. 2015) or the Taylor term (w * dL/dw)^2
  summed over calibration batches (criterion "taylor").
- "n:m": in every m consecutive input channels at each kernel tap, the n highest-scoring weights stay
  (kernels/sparse.py's convention, the one 2:4 sparse tensor cores use; Mishra et al. 2021); layers
  whose input channels per group are not a multiple of m are skipped with that reason.

Zeros are written into the weights in place; the `sparse` conv algorithm (kernels/sparse.py, via
AlgorithmConfig("sparse")) then multiplies only by the non-zeros, and detects the N:M form itself.
Fine-tuning can move zeroed weights again: re-apply the config afterwards (prune_iteratively does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from convopt.errors import ConfigError
from convopt.kernels.sparse import n_m_mask
from convopt.transforms.config import named_selected
from convopt.transforms.importance import MAX_TAYLOR_BATCHES, LossFn, cross_entropy_loss
from convopt.transforms.prune_config import PruneRecord

if TYPE_CHECKING:
    from convopt.transforms.prune_config import PruneConfig

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def weight_scores(layers: list[tuple[str, nn.Module]], criterion: str, model: nn.Module, calibration: Any = None,
                  loss_fn: LossFn | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """One non-negative score per weight: |w|, or (w * dL/dw)^2 summed over calibration batches."""
    if criterion in ("l1", "l2"):
        return {name: m.weight.detach().abs() for name, m in layers}
    if calibration is None:
        raise ConfigError("criterion='taylor' needs data: pass calibration batches (x, y), or use criterion='l1'")
    loss_fn = loss_fn or cross_entropy_loss
    weights = [m.weight for _, m in layers]
    flags, modes = [w.requires_grad for w in weights], {m: m.training for m in model.modules()}
    scores = {name: torch.zeros_like(m.weight, dtype=torch.float32) for name, m in layers}
    seen = 0
    try:
        model.eval()
        for w in weights:
            w.requires_grad_(True)
        for batch in calibration:
            if seen >= MAX_TAYLOR_BATCHES:
                break
            grads = torch.autograd.grad(loss_fn(model, batch), weights, allow_unused=True)
            for (name, m), g in zip(layers, grads):
                if g is not None:
                    scores[name] += (m.weight.detach() * g).float().pow(2)
            seen += 1
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise ConfigError("criterion='taylor' got no calibration batches: the calibration loader is empty")
    return scores


def _smallest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean keep-mask of scores' shape with exactly `count` False entries (the smallest scores)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count:
        keep[torch.topk(scores.flatten().float(), count, largest=False, sorted=False).indices] = False
    return keep.view(scores.shape)


def _n_m(module: nn.Module, scores: torch.Tensor, n: int, m: int) -> torch.Tensor | str:
    """Keep-mask of the N:M pattern along input channels, or why the layer cannot have one."""
    per_group = module.weight.shape[1]
    if per_group % m:
        return f"{per_group} input channels per group is not a multiple of m={m}"
    as_conv = scores if scores.dim() >= 3 else scores.unsqueeze(-1)  # linear (out, in) -> (out, in, 1)
    return n_m_mask(as_conv, n, m).view(scores.shape)


def prune_unstructured(model: nn.Module, config: "PruneConfig", *, calibration: Any = None,
                       loss_fn: LossFn | None = None) -> PruneRecord:  # fmt: skip
    """Zero weights of the selected conv/linear layers in place (kind "unstructured" or "n:m").

    Returns:
        PruneRecord: layers[name] = {"weights", "zeros", "sparsity"}; record.sparsity over all pruned layers.
    """
    record = PruneRecord(config.to_dict())
    layers = named_selected(model, config, WEIGHTED)
    if not layers:
        names = [n for n, mod in model.named_modules() if isinstance(mod, WEIGHTED)]
        raise ConfigError(f"modules={config.modules!r} matches no conv/linear layer; layers are: "
                          f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")  # fmt: skip
    scores = weight_scores(layers, config.criterion, model, calibration, loss_fn)
    masks: dict[str, torch.Tensor] = {}
    if config.kind == "n:m":
        for name, module in layers:
            mask = _n_m(module, scores[name], config.n, config.m)
            if isinstance(mask, str):
                record.skipped[name] = mask
            else:
                masks[name] = mask
        if not masks:
            raise ConfigError(f"no selected layer can take the {config.n}:{config.m} pattern: {record.skipped}")
    elif config.scope == "layer":
        masks = {name: _smallest_mask(scores[name], round(config.ratio * scores[name].numel())) for name, _ in layers}
    else:  # one threshold over every selected layer: (sum of numel,) scores, split back afterwards
        flat = torch.cat([scores[name].flatten().float() for name, _ in layers])
        keep = _smallest_mask(flat, round(config.ratio * flat.numel()))
        start = 0
        for name, module in layers:
            size = module.weight.numel()
            masks[name] = keep[start : start + size].view(module.weight.shape)
            start += size
    total = zeros = 0
    with torch.no_grad():
        for name, module in layers:
            if name not in masks:
                continue
            module.weight.mul_(masks[name].to(module.weight.dtype))
            count, size = int((module.weight == 0).sum()), module.weight.numel()
            record.layers[name] = {"weights": size, "zeros": count, "sparsity": count / size}
            record.changed[name] = f"{count:,} of {size:,} weights zero ({count / size:.1%})"
            total, zeros = total + size, zeros + count
    record.sparsity = zeros / total
    record.params_before = record.params_after = sum(p.numel() for p in model.parameters())
    record.notes.append(f"{zeros:,} of {total:,} weights in {len(masks)} layer(s) are zero ({record.sparsity:.2%})")
    return record
