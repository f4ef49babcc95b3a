"""Low-rank decomposition of conv and linear layers into sequences of smaller layers (lossy: fine-tune after).

- ``tucker``: a KxK conv (any dims, groups=1) becomes reduce 1x1 (C_in->R_in) -> core KxK (R_in->R_out, the
  original stride/padding/dilation) -> expand 1x1 (R_out->C_out, the bias) (Kim et al. 2016, Tucker-2).
- ``cp``: a 2-D KxK conv becomes 1x1 (C_in->R) -> depthwise Kh x 1 -> depthwise 1 x Kw -> 1x1 (R->C_out)
  (Lebedev et al. 2015).
- ``svd``: a 1x1 conv or a Linear becomes two thin layers C_in->R->C_out.

The rank comes from exactly one of: `ratio` (keep that fraction of the layer's MACs: the ranks landing in
[0.95, 1] x target that keep the most singular-value energy, multiples of 8 preferred), `energy` (keep that
fraction of the singular-value energy of each unfolded mode; not for CP), a fixed `rank`, or rank="vbmf"
(what stands out of the noise in each unfolding, vbmf.py; not for CP). With ratio, allocate="latency"
spends the MAC budget across layers by measured time (decompose_latency.py). Layers the method cannot
handle (grouped/depthwise, transposed, wrong kernel for the method) and layers where the chosen ranks would
not reduce MACs are left alone and listed in StepRecord.skipped with the reason. Each decomposed layer's
ranks, MACs and params before/after and relative reconstruction error ||W - W_hat||_F / ||W||_F are in
StepRecord.changed. MACs are per forward of `example_inputs` when the context has them, else per output
position (noted). Factorisations: decompose_factors.py; the replacement layers: decompose_build.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from convopt.errors import ConfigError
from convopt.transforms import decompose_factors as factors
from convopt.transforms import decompose_latency as latency
from convopt.transforms.decompose_build import build, skeleton
from convopt.transforms.config import StepRecord, TransformConfig, TransformContext, register_transform, set_submodule
from convopt.transforms.decompose_rank import (
    LayerGeometry, cp_cost, energy_fractions, energy_rank, linear_rank_for_macs, svd_cost, tucker2_cost,
    tucker2_ranks_for_macs,
)  # fmt: skip
from convopt.transforms.vbmf import evbmf

METHODS = ("tucker", "cp", "svd")
ALLOCATIONS = ("layer", "latency")
_NAMES = {"tucker": "Tucker-2", "cp": "CP", "svd": "SVD"}


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class DecomposeConfig(TransformConfig):
    """Decompose the selected layers with `method`.

    Give exactly one of: ratio (0 < r < 1, the fraction of each layer's MACs to keep), rank (>= 1) or
    energy (0 < e <= 1, the fraction of singular-value energy to keep; tucker and svd only).

    allocate (with ratio): "layer" keeps `ratio` of every layer's MACs; "latency" keeps `ratio` of the selected
    layers' summed MACs and gives each layer the ranks (or keeps it whole) that minimise the summed measured
    time (decompose_latency.py; needs example inputs).
    """

    lossy: ClassVar[bool] = True  # judged by accuracy, not by the output-change budget

    method: str = "tucker"
    ratio: float | None = None
    rank: int | str | None = None
    energy: float | None = None
    allocate: str = "layer"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"DecomposeConfig(method={self.method!r}): use one of {', '.join(METHODS)}")
        given = [k for k in ("ratio", "rank", "energy") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"DecomposeConfig needs exactly one of ratio=, rank=, energy=; got {given or 'none'} "
                              "(e.g. DecomposeConfig('tucker', ratio=0.5) keeps 50% of each layer's MACs)")  # fmt: skip
        if self.ratio is not None and not (_number(self.ratio) and 0.0 < self.ratio < 1.0):
            raise ConfigError(f"DecomposeConfig(ratio={self.ratio!r}): the fraction of MACs to keep must lie strictly "
                              "between 0 and 1, e.g. 0.5")  # fmt: skip
        if self.rank is not None and self.rank != "vbmf" and not (isinstance(self.rank, int) and _number(self.rank)
                                                                  and self.rank >= 1):  # fmt: skip
            raise ConfigError(f"DecomposeConfig(rank={self.rank!r}): the rank must be an integer >= 1, or 'vbmf' "
                              "(estimated per layer by variational Bayesian matrix factorisation)")  # fmt: skip
        if self.rank == "vbmf" and self.method == "cp":
            raise ConfigError("DecomposeConfig(method='cp', rank='vbmf'): VBMF estimates the ranks of matrix "
                              "unfoldings; use method='tucker' or 'svd' with it, or give CP an integer rank")  # fmt: skip
        if self.energy is not None and not (_number(self.energy) and 0.0 < self.energy <= 1.0):
            raise ConfigError(f"DecomposeConfig(energy={self.energy!r}): the singular-value energy to keep must be in "
                              "(0, 1], e.g. 0.9")  # fmt: skip
        if self.allocate not in ALLOCATIONS:
            raise ConfigError(f"DecomposeConfig(allocate={self.allocate!r}): use 'layer' (every layer keeps the ratio) "
                              "or 'latency' (the ratio over all selected layers, ranks chosen by measured time)")  # fmt: skip
        if self.allocate == "latency" and self.ratio is None:
            raise ConfigError("DecomposeConfig(allocate='latency') shares a MAC budget between layers: give ratio=, "
                              "e.g. DecomposeConfig('tucker', ratio=0.5, allocate='latency')")  # fmt: skip
        if self.energy is not None and self.method == "cp":
            raise ConfigError("DecomposeConfig(method='cp', energy=...): CP has no singular values to threshold; "
                              "give ratio= or rank=, or use method='tucker' with energy=")  # fmt: skip


@dataclass
class LayerDecomposition:
    """What happened to one layer (MACs per forward of the example inputs, or per output position)."""

    name: str
    method: str
    ranks: tuple[int, ...]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    rel_error: float
    ms_before: float | None = None  # the layer alone on its recorded input (allocate="latency" only)
    ms_after: float | None = None

    def describe(self) -> str:
        ranks = "x".join(str(r) for r in self.ranks)
        timed = "" if self.ms_before is None else f", measured {self.ms_before:.3g} -> {self.ms_after:.3g} ms"
        return (f"{_NAMES[self.method]} rank {ranks}: MACs {self.macs_before:,} -> {self.macs_after:,} "
                f"({self.macs_after / self.macs_before:.1%}), weight params {self.params_before:,} -> "
                f"{self.params_after:,}, relative reconstruction error {self.rel_error:.3g}{timed}")  # fmt: skip


@dataclass
class DecomposeResult:
    layers: list[LayerDecomposition] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def why_not(module: nn.Module, method: str) -> str | None:
    """Why `method` cannot decompose `module` (None if it can)."""
    if isinstance(module.weight, nn.parameter.UninitializedParameter):
        return "lazy layer not initialised yet: run the model once first"
    if isinstance(module, nn.Linear):
        return None if method == "svd" else "Linear layer: decompose it with method='svd'"
    if module.transposed:
        return "transposed conv: decomposition is not supported for it"
    if module.groups != 1:
        return f"grouped/depthwise conv (groups={module.groups}): channel-mode factors would mix the groups"
    pointwise = all(k == 1 for k in module.kernel_size)
    if method == "svd" and not pointwise:
        return f"{'x'.join(map(str, module.kernel_size))} kernel: SVD handles 1x1 convs; use method='tucker' or 'cp'"
    if method != "svd" and pointwise:
        return f"1x1 conv: its {_NAMES[method]} decomposition is an SVD; use method='svd'"
    if method == "cp" and len(module.kernel_size) != 2:
        return f"{len(module.kernel_size)}-D conv: CP splits a 2-D kernel into vertical and horizontal convs"
    return None


def _geometries(model: nn.Module, names: list[str], example_inputs: tuple) -> dict[str, LayerGeometry]:
    """Pixel counts per layer from one forward of `example_inputs`, summed over calls."""
    seen: dict[str, list[int]] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            if isinstance(module, nn.Linear):
                counts = [x.numel() // x.shape[-1]] * 3
            else:  # (N, C, *spatial): mid = N * H_out * W_in (CP's vertical conv output)
                counts = [x.numel() // x.shape[1], output.numel() // output.shape[1],
                          output.numel() // output.shape[1] // output.shape[-1] * x.shape[-1]]  # fmt: skip
            seen[name] = [a + b for a, b in zip(seen.get(name, [0, 0, 0]), counts)]

        return record

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)  # eval: counting MACs must not update BatchNorm statistics
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {n: _geometry(modules[n], *seen[n]) for n in names if n in seen}


def _geometry(module: nn.Module, in_px: int = 0, out_px: int = 0, mid_px: int = 0) -> LayerGeometry:
    if isinstance(module, nn.Linear):
        return LayerGeometry(module.in_features, module.out_features, (), in_px or 1, out_px or 1, mid_px or 1)
    if not in_px:  # per output position: the input has prod(stride) positions per output position
        stride = module.stride
        in_px, out_px, mid_px = int(torch.tensor(stride).prod()), 1, stride[-1]
    return LayerGeometry(module.in_channels, module.out_channels, tuple(module.kernel_size), in_px, out_px, mid_px)


def _ratio_ranks(module: nn.Module, method: str, g: LayerGeometry) -> Callable[[float], tuple[int, ...]]:
    """ratio -> the ranks keeping that fraction of the layer's MACs (the spectra are computed once per layer)."""
    if method == "tucker":
        w = module.weight.detach()
        kept_out = energy_fractions(factors.mode_singular_values(w, 0))
        kept_in = energy_fractions(factors.mode_singular_values(w, 1))
        return lambda ratio: tucker2_ranks_for_macs(g, ratio * g.macs(), kept_out, kept_in)
    if method == "cp":
        per_rank = cp_cost(g, 1)[0]
        return lambda ratio: (linear_rank_for_macs(per_rank, max(1, g.macs() // per_rank), ratio * g.macs()),)
    full = min(g.c_in, g.c_out)
    return lambda ratio: (linear_rank_for_macs(svd_cost(g, 1)[0], full, ratio * g.macs()),)


def _ranks(module: nn.Module, config: DecomposeConfig, g: LayerGeometry) -> tuple[int, ...]:
    if config.ratio is not None:
        return _ratio_ranks(module, config.method, g)(config.ratio)
    w = module.weight.detach()
    if config.rank == "vbmf":
        return _vbmf_ranks(w, config.method)
    if config.method == "tucker":
        if config.rank is not None:
            return min(config.rank, g.c_out), min(config.rank, g.c_in)
        sv_out, sv_in = factors.mode_singular_values(w, 0), factors.mode_singular_values(w, 1)
        return energy_rank(sv_out, config.energy), energy_rank(sv_in, config.energy)
    if config.method == "cp":
        return (config.rank,)
    if config.rank is not None:
        return (min(config.rank, min(g.c_in, g.c_out)),)
    return (energy_rank(torch.linalg.svdvals(w.double().reshape(g.c_out, g.c_in)), config.energy),)


def _vbmf_ranks(w: torch.Tensor, method: str) -> tuple[int, ...]:
    """EVBMF ranks of the channel-mode unfoldings (tucker: (R_out, R_in); svd: (R,)); 0 = nothing above noise."""
    if method == "svd":
        matrix = w.double().reshape(w.shape[0], w.shape[1])
        return (evbmf(torch.linalg.svdvals(matrix), tuple(matrix.shape)).rank,)
    ranks = []
    for mode in (0, 1):
        rows, columns = w.shape[mode], w.numel() // w.shape[mode]
        values = factors.mode_singular_values(w, mode)[: min(rows, columns)]
        ranks.append(evbmf(values, (rows, columns)).rank)
    return tuple(ranks)


def _latency_plan(model: nn.Module, candidates: list[tuple[str, nn.Module]], config: DecomposeConfig,
                  shapes: dict[str, LayerGeometry], example_inputs: tuple, cost: Callable[..., tuple[int, int]],
                  result: DecomposeResult) -> dict[str, tuple[latency.Choice, float]]:  # fmt: skip
    """allocate="latency": name -> (chosen candidate, seconds of the whole layer); layers kept whole are
    added to result.skipped with their measured time."""
    if not example_inputs:
        raise ConfigError("DecomposeConfig(allocate='latency') times every layer on its real input: pass example "
                          "inputs (decompose_(model, config, (x,)) or apply(..., example_inputs=...))")  # fmt: skip
    modules = dict(candidates)
    options: dict[str, dict[tuple[int, ...], int]] = {}
    for name, module in candidates:
        g, for_ratio = shapes[name], _ratio_ranks(module, config.method, shapes[name])
        costs = {ranks: cost(g, *ranks)[0] for ranks in dict.fromkeys(map(for_ratio, {*latency.GRID, config.ratio}))}
        options[name] = {ranks: macs for ranks, macs in costs.items() if macs < g.macs()}
    inputs = latency.layer_inputs(model, list(modules), example_inputs)
    choices = latency.time_choices(modules, inputs, options, {n: g.macs() for n, g in shapes.items()},
                                   lambda m, ranks: skeleton(m, config.method, ranks))  # fmt: skip
    budget = config.ratio * sum(shapes[n].macs() for n in modules)
    plan = latency.allocate(choices, budget)
    before, after = sum(c[0].seconds for c in choices.values()), sum(c.seconds for c in plan.values())
    macs = sum(c.macs for c in plan.values())
    result.notes.append(f"latency allocation over {len(plan)} layer(s): {macs / (budget / config.ratio):.1%} of their "
                        f"MACs (budget {config.ratio:.0%}), measured layer time {before * 1e3:.3g} -> "
                        f"{after * 1e3:.3g} ms ({before / after:.2f}x)")  # fmt: skip
    for name, choice in plan.items():
        if choice.ranks is None:
            result.skipped[name] = (f"the latency allocation keeps it whole ({choice.seconds * 1e3:.3g} ms): "
                                    "other layers buy more time per MAC cut")  # fmt: skip
    return {name: (choice, choices[name][0].seconds) for name, choice in plan.items()}


def decompose_(model: nn.Module, config: DecomposeConfig, example_inputs: tuple = ()) -> DecomposeResult:
    """Decompose the selected layers of `model` in place; see the module docstring."""
    result = DecomposeResult()
    layer_types = (_ConvNd, nn.Linear)
    selected = [(n, m) for n, m in model.named_modules() if isinstance(m, layer_types) and config.selects(n)]
    if not selected:
        names = [n for n, m in model.named_modules() if isinstance(m, layer_types)]
        raise ConfigError(f"DecomposeConfig(modules={config.modules!r}) selects no conv or linear layer; this model's "
                          f"are {', '.join(names[:10]) or 'none'}{', ...' if len(names) > 10 else ''}")  # fmt: skip
    candidates = []
    for name, module in selected:
        reason = why_not(module, config.method)
        if not name and not reason:
            reason = "the model itself is the layer: wrap it in nn.Sequential"
        if reason:
            result.skipped[name] = reason
        else:
            candidates.append((name, module))
    if not candidates:
        reasons = "; ".join(f"{n}: {r}" for n, r in list(result.skipped.items())[:5])
        raise ConfigError(f"DecomposeConfig(method={config.method!r}, modules={config.modules!r}) matches no layer "
                          f"it can decompose ({reasons})")  # fmt: skip
    shapes = _geometries(model, [n for n, _ in candidates], example_inputs) if example_inputs else {}
    if not example_inputs:
        result.notes.append("MACs are per output position (no example inputs were given)")
    cost = {"tucker": tucker2_cost, "cp": cp_cost, "svd": svd_cost}[config.method]
    if example_inputs:
        for name, _ in candidates:
            if name not in shapes:
                result.skipped[name] = "not called by the model's forward on the example inputs: no MACs to save"
        candidates = [(n, m) for n, m in candidates if n in shapes]
    planned = _latency_plan(model, candidates, config, shapes, example_inputs, cost, result) \
        if config.allocate == "latency" else {}  # fmt: skip
    for name, module in candidates:
        g = shapes.get(name) or _geometry(module)
        choice, whole_s = planned.get(name, (None, 0.0))
        ranks = choice.ranks if choice else _ranks(module, config, g)
        if ranks is None:
            continue  # the latency plan keeps it whole (in result.skipped)
        if min(ranks) == 0:
            result.skipped[name] = ("VBMF finds no component above the estimated noise in its weight (untrained or "
                                    "random weights?); left as is")  # fmt: skip
            continue
        macs, params = cost(g, *ranks)
        if macs >= g.macs():
            label = "x".join(map(str, ranks))
            result.skipped[name] = (f"{_NAMES[config.method]} at rank {label} would not reduce MACs "
                                    f"({g.macs():,} -> {macs:,}); left as is")  # fmt: skip
            continue
        replacement, approx = build(module, config.method, ranks)
        replacement.train(module.training).requires_grad_(module.weight.requires_grad)
        set_submodule(model, name, replacement)
        timed = (whole_s * 1e3, choice.seconds * 1e3) if choice else (None, None)
        result.layers.append(LayerDecomposition(name, config.method, ranks, g.macs(), macs, g.params(), params,
                                                factors.relative_error(module.weight, approx), *timed))  # fmt: skip
    if result.layers:
        before, after = sum(d.macs_before for d in result.layers), sum(d.macs_after for d in result.layers)
        result.notes.append(f"{len(result.layers)} layer(s) decomposed: their MACs {before:,} -> {after:,} "
                            f"({after / before:.1%})")  # fmt: skip
    return result


@register_transform(DecomposeConfig)
def decompose(model: nn.Module, config: DecomposeConfig, context: TransformContext) -> StepRecord:
    result = decompose_(model, config, tuple(context.example_inputs))
    record = StepRecord(config.to_dict(), skipped=dict(result.skipped), notes=list(result.notes))
    record.changed = {d.name: d.describe() for d in result.layers}
    for note in result.notes:
        context.log(note)
    return record
