"""The autotuner: for every conv layer at its real input shape, measure every algorithm that supports it,
keep the fastest whose error is inside the budget, and remember the answer.

Candidates are timed side by side in interleaved rounds (noise hits all alike), on the layer's actual
input activations, with prepared weights excluded (the nn wrappers cache them). PyTorch's `direct` is
always a candidate, so a tuned layer is never slower than the original as measured. Every candidate's
time, error, and the reason any was skipped, go into the TuneReport.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from convopt.capture import capture_layers
from convopt.search.cache import TuningCache, entry_key
from convopt.search.candidates import default_algorithms, prepare_candidates
from convopt.spec import ConvSpec
from convopt.timing import fixed_threads, interleaved_times

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class LayerTuning:
    name: str
    input_shape: list[int]
    chosen: str
    candidates: dict[str, float]  # algorithm -> median ms
    errors: dict[str, float]
    skipped: dict[str, str]
    from_cache: bool


@dataclass
class TuneReport:
    threads: int
    budget_error: float
    layers: list[LayerTuning] = field(default_factory=list)
    cache_path: str | None = None
    cache_rebuilt: str | None = None

    @property
    def cache_hits(self) -> int:
        return sum(layer.from_cache for layer in self.layers)

    def plan(self) -> dict[str, str]:
        return {layer.name: layer.chosen for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cache_hits"], data["cache_misses"] = self.cache_hits, len(self.layers) - self.cache_hits
        return data


def capture_conv_inputs(model: nn.Module, inputs: tuple[Any, ...]) -> dict[str, torch.Tensor]:
    """The input activation of every nn.ConvNd on one forward pass (first call of each)."""
    names = [name for name, module in model.named_modules() if isinstance(module, _CONVS)]
    return {name: io[0] for name, io in capture_layers(model, names, inputs).items()}


def _padding_free(spec: ConvSpec) -> bool:
    return spec.padding_mode == "zeros"


def tune_layer(name: str, conv: nn.Module, x: torch.Tensor, *, budget_error: float, repeats: int,
               algorithms: list[str] | None = None) -> LayerTuning:  # fmt: skip
    """Measure the candidates for one conv on its real input `x` (batched)."""
    spec = ConvSpec.from_module(conv)
    weight, bias = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
    if not _padding_free(spec):
        return LayerTuning(name, list(x.shape), "direct", {}, {}, {"*": f"padding_mode={spec.padding_mode!r}: "
                           "only PyTorch's conv is tuned for non-zero padding modes"}, False)  # fmt: skip
    found = prepare_candidates(spec, x, weight, bias, algorithms, budget_error=budget_error)
    times = {n: t.median_s * 1e3 for n, t in interleaved_times(found.runs, repeats=repeats).items()}
    chosen = min(times, key=times.get)
    return LayerTuning(name, list(x.shape), chosen, times, found.errors, found.skipped, False)


def tune_model(model: nn.Module, example_inputs: tuple[Any, ...], *, threads: int | None = None,
               budget_error: float = 1e-5, repeats: int = 7, cache: TuningCache | None = None,
               algorithms: list[str] | None = None, progress: Callable[[str], None] | None = None) -> TuneReport:  # fmt: skip
    """Tune every nn.ConvNd of `model` at the shapes `example_inputs` produce; cached answers are reused."""
    with fixed_threads(threads):
        threads = torch.get_num_threads()
        cache = cache if cache is not None else TuningCache(threads)
        report = TuneReport(threads, budget_error, cache_path=str(cache.path), cache_rebuilt=cache.rebuilt_reason)
        candidates = algorithms or default_algorithms()
        activations = capture_conv_inputs(model, example_inputs)
        for name, x in activations.items():
            conv = model.get_submodule(name)
            key = entry_key(ConvSpec.from_module(conv), tuple(x.shape), str(x.dtype), budget_error, candidates)
            if (hit := cache.get(key)) is not None:
                report.layers.append(LayerTuning(**{**hit, "name": name, "from_cache": True}))
                continue
            if progress:
                progress(name)
            tuned = tune_layer(name, conv, x, budget_error=budget_error, repeats=repeats, algorithms=candidates)
            report.layers.append(tuned)
            cache.put(key, {k: v for k, v in asdict(tuned).items() if k not in ("name", "from_cache")})
        cache.save()
    return report
