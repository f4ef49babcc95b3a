"""Latency-aware rank allocation: meet a global MAC budget with the per-layer ranks that run fastest.

A uniform ratio (every layer keeps r of its MACs) ignores that the same MAC cut buys different time in
different layers. On a CPU the 1x1 convs a decomposition adds at high resolution (resnet18's 56x56 stage)
are memory-bound, and a strided layer's reduce 1x1 runs at the full input resolution, so cutting those
layers saves little time while deep low-resolution layers speed up almost in proportion to their MACs.

`allocate` gives each layer a few candidates (its ranks at several per-layer MAC ratios, plus keeping it
whole), times each candidate on the layer's recorded input (layers of the same geometry share timings; the
values do not change the speed, so the candidates are default-initialised skeletons, never factorised), and
picks one per layer so that the summed time is smallest while the summed MACs land just under the budget
(within 5%): an exact multiple-choice knapsack solved by dynamic programming over the budget in `STEPS`
units, each candidate's MACs rounded up, so the budget holds exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from convopt.capture import capture_layers
from convopt.errors import ConfigError
from convopt.timing import interleaved_times

GRID = tuple(round(0.15 + 0.05 * i, 2) for i in range(16))  # per-layer MAC ratios tried: 0.15 .. 0.90
STEPS = 4096  # budget resolution of the knapsack


@dataclass(frozen=True)
class Choice:
    """One candidate for a layer: `ranks` None keeps the layer whole."""

    ranks: tuple[int, ...] | None
    macs: int
    seconds: float


def layer_inputs(model: nn.Module, names: list[str], example_inputs: tuple) -> dict[str, torch.Tensor]:
    """The input each named layer sees on its first call in one eval forward of `example_inputs`."""
    was_training = model.training
    try:
        return {name: io[0] for name, io in capture_layers(model.eval(), names, example_inputs).items()}
    finally:
        model.train(was_training)


def _geometry_key(module: nn.Module, x: torch.Tensor) -> tuple:
    """Layers with equal keys run at equal speed for equal ranks."""
    conv = tuple(getattr(module, a, None) for a in ("stride", "padding", "dilation", "groups", "padding_mode"))
    return type(module), tuple(module.weight.shape), module.bias is not None, conv, tuple(x.shape), x.dtype


def time_choices(modules: dict[str, nn.Module], inputs: dict[str, torch.Tensor],
                 options: dict[str, dict[tuple[int, ...], int]], macs: dict[str, int],
                 skeleton: Callable[[nn.Module, tuple[int, ...]], nn.Module], repeats: int = 5,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, list[Choice]]:  # fmt: skip
    """Each layer's candidates (whole first, then `options`: ranks -> MACs) with their measured seconds.

    Candidates of one layer are timed in interleaved rounds with the whole layer, on `inputs[name]`.
    """
    cache: dict[tuple, float] = {}
    result: dict[str, list[Choice]] = {}
    for done, (name, module) in enumerate(modules.items()):
        x, key = inputs[name], _geometry_key(module, inputs[name])
        todo = {ranks: skeleton(module, ranks).eval() for ranks in options[name] if (key, ranks) not in cache}
        if todo:
            fns = {"whole": lambda m=module: m(x)} | {str(r): (lambda m=m: m(x)) for r, m in todo.items()}
            with torch.inference_mode():
                times = interleaved_times(fns, repeats=repeats)
            cache.setdefault((key, None), times["whole"].median_s)
            cache.update({(key, r): times[str(r)].median_s for r in todo})
        elif (key, None) not in cache:
            with torch.inference_mode():
                cache[(key, None)] = interleaved_times({"whole": lambda m=module: m(x)}, repeats=repeats)["whole"].median_s
        result[name] = [Choice(None, macs[name], cache[(key, None)])]
        result[name] += [Choice(r, m, cache[(key, r)]) for r, m in options[name].items()]
        if progress:
            progress(done + 1, len(modules))
    return result


def allocate(choices: dict[str, list[Choice]], budget_macs: float, tol: float = 0.05) -> dict[str, Choice]:
    """One choice per layer: the smallest summed seconds among the combinations whose summed MACs land in
    [(1 - tol) * budget_macs, budget_macs]. The MAC budget stands for the capacity the user keeps, so it is
    spent, not undercut: the allocation only decides where the MACs go. Exact up to the rounding of each
    choice's MACs up to budget / STEPS units (which keeps the upper bound strict).

    Raises:
        ConfigError: no combination lands in the window.
    """
    unit = budget_macs / STEPS
    best = np.full(STEPS + 1, np.inf)  # best[b]: least seconds of the layers so far using exactly b units
    best[0] = 0.0
    picks: list[np.ndarray] = []
    for options in choices.values():
        new, pick = np.full(STEPS + 1, np.inf), np.full(STEPS + 1, -1)
        for index, choice in enumerate(options):
            cost = math.ceil(choice.macs / unit - 1e-9)
            if cost > STEPS:
                continue
            shifted = np.full(STEPS + 1, np.inf)
            shifted[cost:] = best[: STEPS + 1 - cost] + choice.seconds
            better = shifted < new
            new[better], pick[better] = shifted[better], index
        best = new
        picks.append(pick)
    low = math.ceil((1.0 - tol) * STEPS)
    if not np.isfinite(best[low:]).any():
        smallest = sum(min(c.macs for c in options) for options in choices.values())
        largest = sum(max(c.macs for c in options) for options in choices.values())
        raise ConfigError(f"latency allocation: no mix of the ranks tried lands within {tol:.0%} below the budget of "
                          f"{budget_macs:,.0f} MACs (they span {smallest:,} to {largest:,}); use allocate='layer'")  # fmt: skip
    b = low + int(np.argmin(best[low:]))
    chosen = {}
    for (name, options), pick in zip(reversed(list(choices.items())), reversed(picks)):
        choice = options[int(pick[b])]
        chosen[name] = choice
        b -= math.ceil(choice.macs / unit - 1e-9)
    return dict(reversed(list(chosen.items())))
