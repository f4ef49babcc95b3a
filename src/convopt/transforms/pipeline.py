"""The transform engine: run configs through their handlers, checking every step against the original."""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from convopt.errors import BudgetExceededError, ConfigError
from convopt.transforms.config import (
    HANDLERS, Compose, TransformConfig, TransformContext, TransformReport, relative_error,
)  # fmt: skip


def as_inputs(example_inputs: Any) -> tuple[Any, ...]:
    """A model's positional inputs as a tuple (a single tensor becomes a 1-tuple)."""
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor in a model's output (a tensor, tuple, list or dict of them)."""
    leaves, _ = tree_flatten(output)
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    if not tensors:
        raise ConfigError("the model returned no tensor; transforms need a tensor output to check against")
    return tensors[0]


def flatten_steps(config: TransformConfig) -> tuple[TransformConfig, ...]:
    """The configs to run in order: nested Composes are expanded."""
    if isinstance(config, Compose):
        return tuple(step for inner in config.steps for step in flatten_steps(inner))
    return (config,)


def _run(model: nn.Module, config: TransformConfig, *, in_place: bool, example_inputs: Any, calibration: Any,
         max_rel_error: float, log: Callable[[str], None] | None) -> tuple[nn.Module, TransformReport]:  # fmt: skip
    if not isinstance(config, TransformConfig):
        raise ConfigError(f"apply_ takes a transform config, got {type(config).__name__}")
    steps = flatten_steps(config)
    if in_place and (rewriting := [type(s).__name__ for s in steps if getattr(s, "rewrites_graph", False)]):
        raise ConfigError(f"{', '.join(rewriting)} rewrites the graph into a new module: use convopt.apply(...)")
    inputs = as_inputs(example_inputs) if example_inputs is not None else ()
    context = TransformContext(inputs, calibration, log or (lambda message: None))
    reference = None
    if inputs:
        with torch.no_grad():
            reference = first_tensor(model(*inputs)).detach().clone()
    report = TransformReport()
    for step in steps:
        if type(step) not in HANDLERS:
            raise ConfigError(f"no handler is registered for {type(step).__name__}")
        start = time.perf_counter()
        result = HANDLERS[type(step)](model, step, context)
        model, record = result if isinstance(result, tuple) else (model, result)
        record.seconds = time.perf_counter() - start
        if reference is not None:
            with torch.no_grad():
                record.max_rel_error = relative_error(reference, first_tensor(model(*inputs)))
            # Lossy steps (pruning, decomposition, quantization) change outputs on purpose: their error is
            # recorded, and the caller judges them by accuracy instead.
            if not getattr(step, "lossy", False) and not record.max_rel_error <= max_rel_error:  # NaN fails too
                raise BudgetExceededError(
                    f"{type(step).__name__} changed the outputs by {record.max_rel_error:.2e} (relative), over the "
                    f"budget {max_rel_error:.0e}; exclude the offending modules with modules=... or raise the budget"
                )
        report.steps.append(record)
    return model, report


def apply_(model: nn.Module, config: TransformConfig, *, example_inputs: Any = None, calibration: Any = None,
           max_rel_error: float = 1e-4, log: Callable[[str], None] | None = None) -> TransformReport:  # fmt: skip
    """Apply `config` (or a Compose of configs) to `model` in place; each step is checked as it runs.

    With `example_inputs`, every step's output is compared with the original model's: a step whose
    relative error max|ref - out| / max|ref| exceeds `max_rel_error` raises BudgetExceededError (the
    model is then left as that step made it: use `apply` to keep the original). Lossy configs (`lossy = True`:
    pruning, decomposition, quantization) only record their error. Configs that rewrite
    the graph into a new module (FuseConfig) need `apply`.

    Example:
        >>> import torch, convopt
        >>> from convopt.models import default_model
        >>> model, x = default_model(), torch.rand(2, 1, 28, 28)
        >>> report = convopt.apply_(model, convopt.Compose([convopt.FoldBatchNormConfig()]), example_inputs=x)
        >>> len(report.steps[0].changed)  # nine conv + BatchNorm pairs folded
        9
    """
    return _run(model, config, in_place=True, example_inputs=example_inputs, calibration=calibration,
                max_rel_error=max_rel_error, log=log)[1]  # fmt: skip


def apply(model: nn.Module, config: TransformConfig, *, example_inputs: Any = None, calibration: Any = None,
          max_rel_error: float = 1e-4, log: Callable[[str], None] | None = None) -> tuple[nn.Module, TransformReport]:  # fmt: skip
    """Transform a deep copy of `model`: returns (transformed model, report); the original is untouched.

    Example:
        >>> import torch, convopt
        >>> from convopt.models import default_model
        >>> recipe = convopt.Compose([convopt.FoldBatchNormConfig(), convopt.FuseConfig()])
        >>> fast, report = convopt.apply(default_model(), recipe, example_inputs=torch.rand(2, 1, 28, 28))
        >>> report.max_rel_error < 1e-4
        True
    """
    return _run(copy.deepcopy(model), config, in_place=False, example_inputs=example_inputs,
                calibration=calibration, max_rel_error=max_rel_error, log=log)  # fmt: skip
