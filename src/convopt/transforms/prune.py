"""Pruning: the registered PruneConfig handler and `prune_`, the one in-place entry point.

    import convopt
    from convopt.transforms import PruneConfig, prune_
    x = torch.rand(1, 3, 224, 224)
    record = prune_(model, PruneConfig(kind="structured", ratio=0.5), example_inputs=x)  # 50% of MACs left
    prune_(model, PruneConfig(kind="unstructured", ratio=0.8))                           # 80% zeros
    prune_(model, PruneConfig(kind="n:m", n=2, m=4))                                     # 2:4 pattern
    convopt.apply(model, PruneConfig(...), example_inputs=x, max_rel_error=float("inf"))  # as a recipe step

Pruning changes the outputs on purpose: in a recipe, give apply/apply_ a max_rel_error that allows it
(its default 1e-4 guards exact transforms) and judge the result on task accuracy. Structured pruning
(prune_structured.py) shrinks layers; unstructured and N:M (prune_unstructured.py) write exact zeros.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from convopt.errors import ConfigError
from convopt.transforms.config import TransformContext, register_transform
from convopt.transforms.importance import LossFn
from convopt.transforms.pipeline import as_inputs
from convopt.transforms.prune_config import PruneConfig, PruneRecord, parse_prune_spec
from convopt.transforms.prune_structured import prune_structured
from convopt.transforms.prune_unstructured import prune_unstructured


def default_inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """Example inputs from the model's own `input_shape` attribute (as the embedded default model has)."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError(
            f"structured pruning of {type(model).__name__} needs example inputs to trace shapes and count MACs: "
            "pass example_inputs=torch.rand(1, C, H, W) (or give the model an input_shape attribute)"
        )
    param = next(model.parameters(), None)
    return (torch.rand(tuple(shape), dtype=param.dtype if param is not None else torch.float32),)


def prune_(model: nn.Module, config: PruneConfig, *, example_inputs: Any = None, calibration: Any = None,
           loss_fn: LossFn | None = None, log: Callable[[str], None] | None = None) -> PruneRecord:  # fmt: skip
    """Prune `model` in place as `config` says; returns the per-layer PruneRecord.

    Args:
        example_inputs: a tensor or tuple of positional inputs (structured only; MACs are counted at them).
        calibration: iterable of (x, y) batches, for criterion="taylor".
        loss_fn: loss(model, batch) -> scalar for "taylor" (default: cross-entropy against batch[1]).
    """
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"prune_ takes a PruneConfig, got {type(config).__name__}")
    if config.kind == "structured":
        inputs = as_inputs(example_inputs) if example_inputs is not None else default_inputs(model)
        return prune_structured(model, config, inputs, calibration=calibration, loss_fn=loss_fn, log=log)
    return prune_unstructured(model, config, calibration=calibration, loss_fn=loss_fn)


@register_transform(PruneConfig)
def prune_handler(model: nn.Module, config: PruneConfig, context: TransformContext) -> PruneRecord:
    return prune_(model, config, example_inputs=context.example_inputs or None, calibration=context.calibration,
                  log=context.log)  # fmt: skip


__all__ = ["PruneConfig", "PruneRecord", "parse_prune_spec", "prune_"]
