"""Mixed precision: keep the most quantization-sensitive layers in float until an accuracy budget holds.

Given a sensitivity ranking (most sensitive first, from quant_sim.sensitivity), the configurations tried
are prefixes of it: the first k layers stay in float, the rest run in int8. The smallest k whose accuracy
is within `max_drop` of the float baseline wins. Few layers: k = 0, 1, 2, ... in turn; many layers:
bisection on k (assuming accuracy does not fall as more layers stay in float), after checking that
k = 0 fails and k = all passes. This is the accuracy-aware loop of OpenVINO's POT / NNCF, on a ranking.
The names are whatever the build understands: conv/linear module names and, from quantize_flow, ops a
module runs itself ("features.3:Add", a residual add), which the simulation cannot rank but the engine can.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from convopt.errors import BudgetExceededError, ConfigError

LINEAR_UP_TO = 8  # rankings longer than this are searched by bisection


@dataclass
class MixedPrecisionResult:
    """The layers kept in float, the accuracy reached with them, and every configuration tried, in order."""

    excluded: frozenset[str]
    accuracy: float
    trajectory: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["excluded"] = sorted(self.excluded)
        return data


def budget_breakers(sensitivity_rows: list[dict[str, Any]], excluded: frozenset[str] | set[str],
                    max_drop: float) -> list[str]:  # fmt: skip
    """The layers that broke the budget first, most sensitive first: those whose quantization alone drops
    the metric by more than `max_drop`, else (if no single layer does) the ones mixed precision kept in float."""
    alone = [row["name"] for row in sensitivity_rows if row["drop"] > max_drop]
    if alone:
        return alone
    return [row["name"] for row in sensitivity_rows if row["name"] in excluded]


def choose_precision(ranking: list[str], build_and_evaluate: Callable[[frozenset[str]], float], baseline: float,
                     max_drop: float, progress: Callable[[int, int], None] | None = None, *,
                     linear_up_to: int = LINEAR_UP_TO) -> MixedPrecisionResult:  # fmt: skip
    """The shortest prefix of `ranking` to keep in float so that baseline - accuracy <= max_drop.

    Args:
        ranking: layer names, most sensitive first.
        build_and_evaluate: set of layer names to keep in float -> accuracy of that model (same units as
            `baseline`, e.g. top-1 in %).
        baseline: the float model's accuracy.
        max_drop: the budget, in the accuracy's units (points).
        progress: called as progress(configurations_tried, most_that_will_be_tried).
    Returns:
        MixedPrecisionResult; trajectory entries have step, excluded (sorted), num_excluded, accuracy,
        drop, meets_budget.
    Raises:
        BudgetExceededError: even the best configuration tried misses the budget; the message gives the
            best accuracy and its layers, and the error carries `.best_accuracy`, `.best_excluded`,
            `.trajectory`.
        ConfigError: a negative or NaN budget or baseline, or duplicate names in the ranking.
    """
    if not max_drop >= 0 or math.isnan(baseline):
        raise ConfigError(f"max_drop={max_drop}, baseline={baseline}: use a budget >= 0 and a measured baseline")
    if len(set(ranking)) != len(ranking):
        raise ConfigError(f"the ranking names a layer twice: {[n for n in ranking if ranking.count(n) > 1]}")
    n = len(ranking)
    bisect = n > linear_up_to
    planned = (2 + math.ceil(math.log2(max(n, 2)))) if bisect else n + 1
    trajectory: list[dict[str, Any]] = []
    tried: dict[int, float] = {}

    def attempt(k: int) -> bool:
        if k not in tried:
            excluded = frozenset(ranking[:k])
            accuracy = float(build_and_evaluate(excluded))
            tried[k] = accuracy
            drop = baseline - accuracy
            trajectory.append({"step": len(trajectory), "excluded": [name for name in ranking[:k]], "num_excluded": k,
                               "accuracy": accuracy, "drop": drop, "meets_budget": drop <= max_drop})  # fmt: skip
            if progress is not None:
                progress(len(trajectory), planned)
        return baseline - tried[k] <= max_drop  # NaN accuracy fails

    def result(k: int) -> MixedPrecisionResult:
        return MixedPrecisionResult(frozenset(ranking[:k]), tried[k], trajectory)

    if attempt(0):
        return result(0)
    if not bisect:
        for k in range(1, n + 1):
            if attempt(k):
                return result(k)
        raise _budget_error(trajectory, baseline, max_drop)
    if not attempt(n):
        raise _budget_error(trajectory, baseline, max_drop)
    low, high = 0, n  # low misses the budget, high meets it
    while high - low > 1:
        middle = (low + high) // 2
        if attempt(middle):
            high = middle
        else:
            low = middle
    return result(high)


def _names(names: list[str], most: int = 8) -> str:
    return (": " + ", ".join(names[:most]) + (" ..." if len(names) > most else "")) if names else ""


def _budget_error(trajectory: list[dict[str, Any]], baseline: float, max_drop: float) -> BudgetExceededError:
    scored = [t for t in trajectory if not math.isnan(t["accuracy"])] or trajectory
    best = max(scored, key=lambda t: (t["accuracy"] if not math.isnan(t["accuracy"]) else -math.inf,
                                      -t["num_excluded"]))  # fmt: skip
    kept = best["excluded"]
    error = BudgetExceededError(
        f"no precision assignment meets the accuracy budget: the best tried reaches {best['accuracy']:.4g} "
        f"(drop {best['drop']:.4g} points vs baseline {baseline:.4g}, budget {max_drop:g}) with "
        f"{len(kept)} layer(s) in float{_names(kept)}; "
        "raise --max-accuracy-drop, calibrate with more or better data, or run QAT"
    )
    error.best_accuracy = best["accuracy"]
    error.best_excluded = frozenset(kept)
    error.trajectory = trajectory
    return error


__all__ = ["MixedPrecisionResult", "budget_breakers", "choose_precision"]
