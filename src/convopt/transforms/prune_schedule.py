"""Iterative pruning: prune a step, fine-tune, evaluate, repeat -- until the target or the accuracy budget.

Structured steps remove the cost geometrically (step i leaves (1 - ratio)^(i/steps) of the original), so
every step takes the same share of what is left. Unstructured steps follow the cubic sparsity schedule
of Zhu & Gupta 2018 ("To prune, or not to prune"): s_i = ratio * (1 - (1 - i/steps)^3), fast at first
while the network is redundant, gentle at the end; after fine-tuning, the step is re-applied so the
sparsity is exact again. N:M is one pattern, so it takes exactly one step.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from convopt.errors import BudgetExceededError, ConfigError
from convopt.transforms.importance import LossFn
from convopt.transforms.prune import prune_
from convopt.transforms.prune_config import PruneConfig, PruneRecord


@dataclass
class PruneSchedule:
    """What prune_iteratively did: one record per step and the accuracy trajectory.

    trajectory[i] = {"step", "ratio" (cumulative, of the original), "accuracy" (None without evaluate)};
    entry 0 is the unpruned model.
    """

    records: list[PruneRecord] = field(default_factory=list)
    trajectory: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"records": [dataclasses.asdict(r) for r in self.records], "trajectory": self.trajectory}


def step_ratios(config: PruneConfig, steps: int) -> list[float]:
    """Cumulative ratio (of the original) reached after each step."""
    if config.kind == "n:m":
        return [config.sparsity]
    if config.kind == "structured":
        return [1 - (1 - config.ratio) ** (i / steps) for i in range(1, steps + 1)]
    return [config.ratio * (1 - (1 - i / steps) ** 3) for i in range(1, steps + 1)]


def prune_iteratively(model: nn.Module, config: PruneConfig, steps: int,
                      finetune: Callable[[nn.Module, int], None] | None = None,
                      evaluate: Callable[[nn.Module], float] | None = None,
                      max_accuracy_drop: float | None = None, *, example_inputs: Any = None,
                      calibration: Any = None, loss_fn: LossFn | None = None,
                      log: Callable[[str], None] | None = None) -> PruneSchedule:  # fmt: skip
    """Prune `model` in place in `steps` steps of `config`, calling `finetune(model, step)` after each.

    Args:
        steps: number of prune + fine-tune rounds (1 for kind="n:m").
        finetune: trains the model in place; `step` counts from 1.
        evaluate: model -> accuracy (any unit, higher is better; the budget uses the same unit).
        max_accuracy_drop: largest allowed evaluate(original) - evaluate(pruned); needs `evaluate`.
    Raises:
        BudgetExceededError: a step drops accuracy by more than the budget. The message names the best
            ratio that stayed within it; the exception carries `best_model` (a copy of that model, the
            original when no step did) and `schedule`. `model` is left as the failing step made it.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r} must be a positive integer")
    if config.kind == "n:m" and steps != 1:
        raise ConfigError(f"an {config.n}:{config.m} pattern is applied at once: use steps=1, got {steps}")
    if max_accuracy_drop is not None and (evaluate is None or max_accuracy_drop < 0):
        raise ConfigError(f"max_accuracy_drop={max_accuracy_drop!r} needs evaluate=... and a value >= 0")
    log = log or (lambda message: None)
    schedule = PruneSchedule()
    baseline = evaluate(model) if evaluate else None
    schedule.trajectory.append({"step": 0, "ratio": 0.0, "accuracy": baseline})
    best = (copy.deepcopy(model), 0.0, baseline) if max_accuracy_drop is not None else None
    left = 1.0  # structured: fraction of the original cost still there
    for step, ratio in enumerate(step_ratios(config, steps), start=1):
        if config.kind == "structured":
            step_config = dataclasses.replace(config, ratio=min(max(1 - (1 - ratio) / left, 1e-6), 1 - 1e-6))
        else:
            step_config = dataclasses.replace(config, ratio=ratio) if config.kind == "unstructured" else config
        record = prune_(model, step_config, example_inputs=example_inputs, calibration=calibration, loss_fn=loss_fn)
        if config.kind == "structured":
            left *= record.cost_fraction
        if finetune is not None:
            finetune(model, step)
            if config.kind != "structured":  # fine-tuning moved zeroed weights: restore the exact sparsity
                record = prune_(model, step_config, calibration=calibration, loss_fn=loss_fn)
        schedule.records.append(record)
        reached = 1 - left if config.kind == "structured" else record.sparsity
        accuracy = evaluate(model) if evaluate else None
        schedule.trajectory.append({"step": step, "ratio": reached, "accuracy": accuracy})
        log(f"prune step {step}/{steps}: ratio {reached:.3f}" + (f", accuracy {accuracy:.4g}" if evaluate else ""))
        if best is None:
            continue
        if baseline - accuracy > max_accuracy_drop:
            best_model, best_ratio, best_accuracy = best
            error = BudgetExceededError(
                f"pruning step {step} (ratio {reached:.3f}) drops accuracy by {baseline - accuracy:.4g} > budget "
                f"{max_accuracy_drop}; the best within budget is ratio {best_ratio:.3f} (accuracy {best_accuracy:.4g}, "
                f"baseline {baseline:.4g}): ask for that ratio, fine-tune longer, or allow a larger drop"
            )
            error.best_model, error.schedule = best_model, schedule
            raise error
        best = (copy.deepcopy(model), reached, accuracy)
    return schedule
