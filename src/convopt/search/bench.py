"""`convopt bench`: every supporting algorithm timed side by side with PyTorch on suites of layer shapes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from convopt.analysis.hardware import HardwareProfile
from convopt.search.candidates import default_algorithms, prepare_candidates
from convopt.spec import ConvSpec
from convopt.timing import fixed_threads, interleaved_times

_TORCH = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass(frozen=True)
class LayerCase:
    """One layer shape: (C_in, C_out, kernel, stride, padding, groups) on a spatial size, batch from the run."""

    name: str
    spec: ConvSpec
    spatial: tuple[int, ...]

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.spec.in_channels, *self.spatial)


def _case(name: str, c_in: int, c_out: int, k: int, size: int, *, dims: int = 2, stride: int = 1,
          padding: Any = None, groups: int = 1) -> LayerCase:  # fmt: skip
    padding = k // 2 if padding is None else padding
    spec = ConvSpec.create(c_in, c_out, (k,) * dims, stride=stride, padding=padding, groups=groups, bias=False)
    return LayerCase(name, spec, (size,) * dims)


SUITES: dict[str, list[LayerCase]] = {
    "resnet18": [
        _case("conv1 7x7/2 3->64 @224", 3, 64, 7, 224, stride=2),
        _case("layer1 3x3 64 @56", 64, 64, 3, 56),
        _case("layer2 3x3 128 @28", 128, 128, 3, 28),
        _case("layer3 3x3 256 @14", 256, 256, 3, 14),
        _case("layer4 3x3 512 @7", 512, 512, 3, 7),
        _case("layer2.0 3x3/2 64->128 @56", 64, 128, 3, 56, stride=2),
        _case("downsample 1x1/2 128->256 @28", 128, 256, 1, 28, stride=2, padding=0),
    ],
    "large-kernel": [_case(f"{k}x{k} 64 @64", 64, 64, k, 64, padding="same") for k in (7, 13, 21, 31)],
    "volumes": [
        _case("3x3x3 16 @64^3", 16, 16, 3, 64, dims=3, padding="same"),
        _case("5x5x5 16 @64^3", 16, 16, 5, 64, dims=3, padding="same"),
        _case("7x7x7 16 @64^3", 16, 16, 7, 64, dims=3, padding="same"),
        _case("3x3x3 32 @32^3", 32, 32, 3, 32, dims=3, padding="same"),
    ],
    "depthwise": [
        _case("dw 3x3 32 @112", 32, 32, 3, 112, groups=32),
        _case("dw 3x3 144 @56", 144, 144, 3, 56, groups=144),
        _case("dw 3x3/2 144 @56", 144, 144, 3, 56, stride=2, groups=144),
        _case("dw 3x3 384 @14", 384, 384, 3, 14, groups=384),
        _case("dw 5x5 240 @28", 240, 240, 5, 28, groups=240),
    ],
}


@dataclass
class CandidateResult:
    algorithm: str
    seconds: float | None
    speedup_vs_pytorch: float | None
    gflops: float | None
    percent_of_peak: float | None
    normwise_error: float | None
    skipped: str | None = None


@dataclass
class CaseResult:
    case: str
    input_shape: list[int]
    spec: dict[str, Any]
    macs: int
    pytorch_seconds: float
    candidates: list[CandidateResult] = field(default_factory=list)


@dataclass
class BenchReport:
    suite: str
    batch: int
    threads: int
    repeats: int
    sparsity: float
    hardware: HardwareProfile
    cases: list[CaseResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hardware"] = self.hardware.to_dict()
        data["units"] = "GFLOP/s = 2 x direct-equivalent MACs / time; error = max|y - y64| / max(|x| conv |w|)"
        return data


def magnitude_prune(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the `sparsity` fraction of smallest-magnitude weights (for sparse-weight benchmarks)."""
    if sparsity <= 0:
        return weight
    k = int(round(sparsity * weight.numel()))
    if k == 0:
        return weight
    threshold = weight.abs().flatten().kthvalue(k).values
    return torch.where(weight.abs() > threshold, weight, torch.zeros_like(weight))


def bench_case(case: LayerCase, batch: int, repeats: int, sparsity: float, peak_gflops: float,
               algorithms: list[str] | None = None) -> CaseResult:  # fmt: skip
    spec, shape = case.spec, case.input_shape(batch)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    weight = magnitude_prune(torch.randn(spec.weight_shape, generator=generator), sparsity)
    padding = [before for before, _ in spec.padding] if all(a == b for a, b in spec.padding) else "same"
    torch_fn = _TORCH[spec.dims]
    macs = spec.macs(shape)
    names = algorithms or default_algorithms()
    found = prepare_candidates(spec, x, weight, None, names)
    runs = {"pytorch": lambda: torch_fn(x, weight, None, spec.stride, padding, spec.dilation, spec.groups),
            **found.runs}  # fmt: skip
    times = interleaved_times(runs, repeats=repeats)
    baseline = times["pytorch"].median_s
    result = CaseResult(case.name, list(shape), asdict(spec), macs, baseline)
    for name in names:
        if name in found.skipped:
            result.candidates.append(CandidateResult(name, None, None, None, None, None, skipped=found.skipped[name]))
            continue
        seconds = times[name].median_s
        gflops = 2 * macs / seconds / 1e9
        result.candidates.append(CandidateResult(name, seconds, baseline / seconds, gflops,
                                                 100 * gflops / peak_gflops, found.errors[name]))  # fmt: skip
    return result


def run_bench(suite: str, *, batch: int = 1, threads: int | None = None, repeats: int = 7, sparsity: float = 0.0,
              hardware: HardwareProfile, algorithms: list[str] | None = None,
              progress: Callable[[str], None] | None = None) -> BenchReport:  # fmt: skip
    """Time every supporting algorithm on every layer of `suite` (see SUITES) next to PyTorch's conv."""
    with fixed_threads(threads):
        report = BenchReport(suite, batch, torch.get_num_threads(), repeats, sparsity, hardware)
        for case in SUITES[suite]:
            if progress:
                progress(case.name)
            report.cases.append(bench_case(case, batch, repeats, sparsity, hardware.peak_gflops["fp32"], algorithms))
    return report
