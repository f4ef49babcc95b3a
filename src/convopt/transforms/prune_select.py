"""Choose which channel units to remove so that a global cost (MACs, params or latency) meets a target.

Cost model: a conv or linear layer with a fraction f_in of its input channels and f_out of its output
channels left costs cost0 * f_in * f_out (grouped and depthwise convs lose whole groups: cost0 * f_in).
cost0 is the layer's MACs or weight count at the example inputs, or its measured latency, so "latency"
ranks channels by the time they cost, which differs from MACs for depthwise and memory-bound layers.
(The latency model scales each layer's measured time with its MAC fraction: fixed per-call overheads are
not modelled, so the measured speed-up can differ from the modelled one; the benchmark measures it.)

Selection ("global" scope): units of one *space* (the channels of the same producer layers, e.g. one
residual stream) are taken least important first, in blocks that keep the surviving channel count a
multiple of `round_to`. Every round, each space's next blocks are ranked by importance / estimated
saving (the cost's first-order derivative, an over-estimate for a bilinear cost) and taken in that
order while their estimates fit the remaining gap; the exact cost is then recomputed. When no block
fits, the next one is chosen on exact costs (the least important that lands within 4% below the
target), so a coarse block does not overshoot the target by much. The per-layer ratios fall out of the global ranking. This is
a greedy knapsack (least importance per unit of cost first, as in Shen et al. 2022, "Structural pruning
via latency-saliency knapsack"): it favours channels that cost much, typically the early high-resolution
layers, which gives the largest speed-ups; `max_layer_ratio` caps how far any one layer goes.
"layer" scope removes the same fraction of every space instead, found by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from convopt.errors import BudgetExceededError
from convopt.transforms.dependency import DependencyGraph

TOLERANCE = 0.01  # stop within 1% above the target cost (the contract is 5%)


@dataclass
class CostModel:
    """Per-layer cost at full width and the bilinear model of how it shrinks."""

    graph: DependencyGraph
    cost0: dict[str, float]  # conv/linear layer -> cost at full width

    def _grouped(self, name: str) -> bool:
        layer = self.graph.layers[name]
        return layer.kind == "conv" and layer.module.groups > 1

    def total(self, removed: set[int]) -> float:
        total = 0.0
        for name, c0 in self.cost0.items():
            layer = self.graph.layers[name]
            f_in = len(self.graph.kept(name, "in", removed)) / len(layer.in_vars)
            f_out = 1.0 if self._grouped(name) else len(self.graph.kept(name, "out", removed)) / len(layer.out_vars)
            total += c0 * f_in * f_out
        return total

    def savings(self, removed: set[int]) -> dict[int, float]:
        """First-order cost saving of removing each remaining unit alone (an over-estimate)."""
        kept = {(n, s): len(self.graph.kept(n, s, removed)) for n in self.cost0 for s in ("in", "out")}
        out: dict[int, float] = {}
        for root, unit in self.graph.units.items():
            if root in removed:
                continue
            saving = 0.0
            for (name, side), idx in unit.members.items():
                if name not in self.cost0:
                    continue
                layer = self.graph.layers[name]
                n_in, n_out = len(layer.in_vars), len(layer.out_vars)
                if self._grouped(name):
                    saving += self.cost0[name] * len(idx) / n_in if side == "in" else 0.0
                elif side == "in":
                    saving += self.cost0[name] * len(idx) * kept[(name, "out")] / (n_in * n_out)
                else:
                    saving += self.cost0[name] * len(idx) * kept[(name, "in")] / (n_in * n_out)
            out[root] = saving
        return out


def spaces(graph: DependencyGraph, candidates: list[int], importance: dict[int, float], round_to: int,
           max_layer_ratio: float) -> tuple[list[list[list[int]]], list[int]]:  # fmt: skip
    """Per space, the removable blocks of units in removal order (least important first), and its unit count."""
    by_space: dict[tuple[str, ...], list[int]] = {}
    for root in candidates:
        by_space.setdefault(tuple(sorted(graph.units[root].producers)), []).append(root)
    result, sizes = [], []
    for roots in by_space.values():
        roots.sort(key=lambda r: (importance[r], r))
        channels = graph.units[roots[0]].channels
        step = round_to // math.gcd(round_to, channels)  # units per block: kept channels stay multiples of round_to
        min_keep = max(step, math.ceil((1 - max_layer_ratio) * len(roots) - 1e-9), 1)
        blocks, start = [], len(roots) % step
        if start and len(roots) - start >= min_keep:
            blocks.append(roots[:start])
        while len(roots) - (start + step) >= min_keep:
            blocks.append(roots[start : start + step])
            start += step
        if blocks:
            result.append(blocks)
            sizes.append(len(roots))
    return result, sizes


def select_global(model: CostModel, blocks: list[list[list[int]]], importance: dict[int, float],
                  target: float, start: set[int] | None = None) -> set[int]:  # fmt: skip
    """Units (roots) to remove, beyond `start`, so that model.total(removed) <= target * (1 + TOLERANCE)."""
    removed: set[int] = set(start or ())
    taken = [0] * len(blocks)
    cost = model.total(removed)
    while cost > target * (1 + TOLERANCE):
        saving = model.savings(removed)
        ranked = []
        for s, space in enumerate(blocks):
            for block in space[taken[s] :]:
                save = sum(saving[r] for r in block)
                score = sum(importance[r] for r in block) / save if save > 0 else math.inf
                ranked.append((score, s, save))
        ranked = sorted(r for r in ranked if r[0] != math.inf)
        if not ranked:
            raise _unreachable(cost, target, model)
        gap, covered = cost - target, 0.0
        for score, s, save in ranked:
            if covered + save > gap or taken[s] == len(blocks[s]):
                continue  # would overshoot: smaller blocks further down the ranking may fit the gap
            # Always the space's next block: within a space blocks are in importance order.
            removed.update(blocks[s][taken[s]])
            taken[s] += 1
            covered += save
        if covered == 0.0:  # every block over-shoots by its estimate: decide on exact costs
            s = _exact_step(model, blocks, taken, importance, removed, target)
            removed.update(blocks[s][taken[s]])
            taken[s] += 1
        cost = model.total(removed)
    return removed


def _exact_step(model: CostModel, blocks: list[list[list[int]]], taken: list[int], importance: dict[int, float],
                removed: set[int], target: float) -> int:
    """The space whose next block to take: the least important one that lands within 4% below the target,
    else the one that meets it with the least overshoot, else the least importance per exact saving."""
    options = []
    for s, space in enumerate(blocks):
        if taken[s] < len(space):
            block = space[taken[s]]
            cost = model.total(removed | set(block))
            options.append((cost <= target * (1 + TOLERANCE), sum(importance[r] for r in block), cost, s))
    meeting = [o for o in options if o[0]]
    close = [o for o in meeting if o[2] >= target * (1 - 4 * TOLERANCE)]
    if close:
        return min(close, key=lambda o: (o[1], o[2]))[3]
    if meeting:  # all land well below the target: the one that removes least
        return max(meeting, key=lambda o: o[2])[3]
    before = model.total(removed)
    return min(options, key=lambda o: o[1] / max(before - o[2], 1e-30))[3]


def select_uniform(model: CostModel, blocks: list[list[list[int]]], sizes: list[int], importance: dict[int, float],
                   target: float) -> set[int]:  # fmt: skip
    """Remove the same fraction of every space (its least important units): the largest fraction that stays
    above the target, then -- as block rounding rarely lands exactly -- the blocks between it and the next
    fraction, ranked as in select_global, until the target is met.

    Args:
        sizes: units per space (blocks hold only the removable ones).
    """

    def counts(fraction: float) -> list[int]:
        out = []
        for space, size in zip(blocks, sizes):
            lengths = [len(b) for b in space]
            out.append(sum(1 for k in range(len(space)) if sum(lengths[: k + 1]) <= fraction * size + 1e-9))
        return out

    def removed_at(fraction: float) -> set[int]:
        return {r for space, k in zip(blocks, counts(fraction)) for block in space[:k] for r in block}

    lo, hi = 0.0, 1.0
    if (least := model.total(removed_at(hi))) > target * (1 + TOLERANCE):
        raise _unreachable(least, target, model)
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if model.total(removed_at(mid)) <= target * (1 + TOLERANCE) else (mid, hi)
    between = [space[a:b] for space, a, b in zip(blocks, counts(lo), counts(hi))]
    return select_global(model, between, importance, target, start=removed_at(lo))


def _unreachable(cost: float, target: float, model: CostModel) -> BudgetExceededError:
    full = model.total(set())
    return BudgetExceededError(
        f"structured pruning can remove at most {1 - cost / full:.1%} of the cost here ({cost:.3g} of {full:.3g} "
        f"left, target {target:.3g}): channels that are blocked, unselected or held by max_layer_ratio limit it; "
        "lower the ratio, raise max_layer_ratio, or widen the modules pattern"
    )
