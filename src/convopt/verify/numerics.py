"""Layer-by-layer numerics of a candidate model against its reference, on the same inputs.

Both models run side by side; forward hooks on their leaf modules capture every layer's output. Layers
are aligned by module name, by position where a pass renamed them, and with the absorbed reference layer
they reproduce where a pass fused several into one (`convopt.verify.alignment`). Per aligned layer: max
abs error, relative L2 error, SQNR (REFERENCES.md s.3: >= 40 dB per int8 per-channel layer is good,
< 20 dB is broken), cosine similarity, NaN/Inf counts and activation statistics with drift flags. The
first layer that breaks the tolerance is named. Statistics are accumulated batch by batch, so memory does
not grow with the number of samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convopt.errors import ConvoptError
from convopt.verify.accuracy import call_model
from convopt.verify.alignment import absorb_fused, align
from convopt.verify.numerics_stats import ActivationStats, RunningStats, drift_flags

DEFAULT_MIN_SQNR_DB = 40.0
OUTPUT = "(output)"


@dataclass
class LayerNumerics:
    """Error of one candidate layer's output against the aligned reference layer's output."""

    name: str  # the reference layer's module name (or OUTPUT)
    candidate_name: str
    kind: str  # module type of the candidate layer
    matched_by: str  # "name", "position", "fused" (absorbed the reference layers up to `name`) or "output"
    shape: list[int]
    max_abs_error: float
    rel_l2_error: float
    sqnr_db: float
    cosine: float
    nan_count: int  # in the candidate's output
    inf_count: int
    reference_nonfinite: int
    reference_stats: ActivationStats
    candidate_stats: ActivationStats
    drift: list[str] = field(default_factory=list)
    passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("reference_stats", "candidate_stats")}
        data.update(reference_stats=self.reference_stats.to_dict(), candidate_stats=self.candidate_stats.to_dict())
        return data


@dataclass
class NumericsReport:
    layers: list[LayerNumerics]
    min_sqnr_db: float
    num_samples: int
    first_failing: str | None = None
    unmatched_reference: list[str] = field(default_factory=list)
    unmatched_candidate: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_sqnr_db": self.min_sqnr_db, "num_samples": self.num_samples, "first_failing": self.first_failing,
            "layers": [layer.to_dict() for layer in self.layers], "unmatched_reference": self.unmatched_reference,
            "unmatched_candidate": self.unmatched_candidate, "notes": list(self.notes),
        }  # fmt: skip


def _as_float(value: Any) -> torch.Tensor | None:
    if isinstance(value, (tuple, list)):
        value = next((v for v in value if isinstance(v, torch.Tensor)), None)
    if not isinstance(value, torch.Tensor):
        return None
    if value.is_quantized:
        value = value.dequantize()
    # A copy: a later in-place layer (ReLU(inplace=True)) would otherwise rewrite the recorded output.
    return value.detach().clone() if value.is_floating_point() else None


def capture(model: nn.Module, x: torch.Tensor, label: str = "model",
            ) -> tuple[list[tuple[str, str, torch.Tensor]], torch.Tensor, bool]:  # fmt: skip
    """Run `model` on `x`; return [(name, module type, output)] of its leaf modules in execution order,
    the model's output, and whether hooks could be attached at all (not on TorchScript modules)."""
    records: list[tuple[str, str, torch.Tensor]] = []
    calls: dict[str, int] = {}
    handles = []

    def hook(name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            tensor = _as_float(output)
            if tensor is not None:
                calls[name] = calls.get(name, 0) + 1
                label = name if calls[name] == 1 else f"{name}#{calls[name]}"
                records.append((label, type(module).__name__, tensor))
        return record

    hooked = True
    try:
        for name, module in model.named_modules():
            if name and not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(hook(name)))
    except (RuntimeError, AttributeError):  # TorchScript modules do not take Python hooks
        hooked = False
    try:
        with torch.no_grad():
            output = _as_float(call_model(model, x, label))
    finally:
        for handle in handles:
            handle.remove()
    return records, output, hooked


class _LayerAccumulator:
    def __init__(self, bins: int) -> None:
        self.count = 0
        self.sum_e2 = self.sum_r2 = self.sum_c2 = self.sum_rc = 0.0
        self.max_abs = 0.0
        self.nan = self.inf = self.reference_nonfinite = 0
        self.reference, self.candidate = RunningStats(bins), RunningStats(bins)

    def update(self, ref: torch.Tensor, cand: torch.Tensor) -> None:
        dtype = torch.promote_types(torch.promote_types(ref.dtype, cand.dtype), torch.float32)
        r, c = ref.flatten().to(dtype), cand.flatten().to(dtype)
        total_r, total_c = float(r.sum(dtype=torch.float64)), float(c.sum(dtype=torch.float64))
        if not (math.isfinite(total_r) and math.isfinite(total_c)):  # a NaN or Inf somewhere: count, then drop
            self.nan += int(torch.isnan(c).sum())
            self.inf += int(torch.isinf(c).sum())
            self.reference_nonfinite += int((~torch.isfinite(r)).sum())
            both = torch.isfinite(r) & torch.isfinite(c)
            r, c = r[both], c[both]
            total_r, total_c = float(r.sum(dtype=torch.float64)), float(c.sum(dtype=torch.float64))
        if not r.numel():
            return
        error = r - c
        self.count += r.numel()
        self.sum_e2 += float(torch.dot(error, error))
        self.sum_r2 += float(torch.dot(r, r))
        self.sum_c2 += float(torch.dot(c, c))
        self.sum_rc += float(torch.dot(r, c))
        self.max_abs = max(self.max_abs, float(torch.linalg.vector_norm(error, ord=math.inf)))
        self.reference.update(r, total_r, self.sum_r2)
        self.candidate.update(c, total_c, self.sum_c2)

    def finish(self, names: tuple[str, str, str, str], shape: list[int], min_sqnr_db: float) -> LayerNumerics:
        name, candidate_name, kind, how = names
        rel = math.sqrt(self.sum_e2 / self.sum_r2) if self.sum_r2 > 0 else (0.0 if self.sum_e2 == 0 else math.inf)
        if self.sum_e2 == 0:
            sqnr = math.inf
        else:
            sqnr = 10 * math.log10(self.sum_r2 / self.sum_e2) if self.sum_r2 else -math.inf
        norms = math.sqrt(self.sum_r2 * self.sum_c2)
        cosine = self.sum_rc / norms if norms > 0 else (1.0 if self.sum_r2 == self.sum_c2 else 0.0)
        ref_stats, cand_stats = self.reference.finish(), self.candidate.finish()
        new_nonfinite = self.nan + self.inf > self.reference_nonfinite
        drift = drift_flags(ref_stats, cand_stats, new_nonfinite)
        passed = sqnr >= min_sqnr_db and not new_nonfinite
        if sqnr < min_sqnr_db:
            drift.append("low_sqnr")
        return LayerNumerics(name, candidate_name, kind, how, shape, self.max_abs, rel, sqnr, cosine, self.nan,
                             self.inf, self.reference_nonfinite, ref_stats, cand_stats, drift, passed)  # fmt: skip


def _check_outputs(ref_out: torch.Tensor | None, cand_out: torch.Tensor | None) -> None:
    if ref_out is None or cand_out is None:
        raise ConvoptError("numerics need models that return a floating-point tensor (or a tuple starting with one)")
    if ref_out.shape != cand_out.shape:
        raise ConvoptError(f"the candidate's output shape {tuple(cand_out.shape)} differs from the reference's "
                           f"{tuple(ref_out.shape)}; compare models with the same task head")  # fmt: skip


def compare_numerics(
    reference: nn.Module,
    candidate: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int = 64,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
    bins: int = 32,
) -> NumericsReport:
    """Per-layer error of `candidate` against `reference` on inputs `x` (N, ...), in batches.

    A layer passes when its SQNR is at least `min_sqnr_db` and it has no NaN/Inf the reference lacks;
    `first_failing` names the first failing layer in execution order (the model output counts last).
    """
    pairs: list[tuple[int, int, str]] | None = None
    accumulators: list[_LayerAccumulator] = []
    meta: list[tuple[tuple[str, str, str, str], list[int]]] = []
    report = NumericsReport(layers=[], min_sqnr_db=min_sqnr_db, num_samples=len(x))
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        ref_layers, ref_out, ref_hooked = capture(reference, batch, "reference")
        cand_layers, cand_out, cand_hooked = capture(candidate, batch, "candidate")
        if pairs is None:
            _check_outputs(ref_out, cand_out)
            keys = lambda layers: [(name, tuple(t.shape[1:])) for name, _, t in layers]  # noqa: E731
            pairs = align(keys(ref_layers), keys(cand_layers))
            pairs = absorb_fused(pairs, [t for _, _, t in ref_layers], [t for _, _, t in cand_layers],
                                 [kind for _, kind, _ in cand_layers])  # fmt: skip
            for i, j, how in pairs:
                names = (ref_layers[i][0], cand_layers[j][0], cand_layers[j][1], how)
                meta.append((names, list(ref_layers[i][2].shape[1:])))
            meta.append(((OUTPUT, OUTPUT, type(candidate).__name__, "output"), list(ref_out.shape[1:])))
            accumulators = [_LayerAccumulator(bins) for _ in meta]
            matched_ref, matched_cand = {i for i, _, _ in pairs}, {j for _, j, _ in pairs}
            report.unmatched_reference = [n for k, (n, _, _) in enumerate(ref_layers) if k not in matched_ref]
            report.unmatched_candidate = [n for k, (n, _, _) in enumerate(cand_layers) if k not in matched_cand]
            sides = (("reference", ref_hooked, ref_layers), ("candidate", cand_hooked, cand_layers))
            for role, hooked, layers in sides:
                if not (hooked and layers):
                    report.notes.append(f"the {role}'s layers cannot be observed (TorchScript or an exported "
                                        "program?): compared by output only")  # fmt: skip
        for accumulator, (i, j, _) in zip(accumulators, pairs):
            accumulator.update(ref_layers[i][2], cand_layers[j][2])
        accumulators[-1].update(ref_out, cand_out)
    report.layers = [acc.finish(names, shape, min_sqnr_db) for acc, (names, shape) in zip(accumulators, meta)]
    report.first_failing = next((layer.name for layer in report.layers if not layer.passed), None)
    return report


__all__ = ["DEFAULT_MIN_SQNR_DB", "LayerNumerics", "NumericsReport", "capture", "compare_numerics"]
