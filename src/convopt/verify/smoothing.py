"""Randomized smoothing: certified L2 robustness by Monte-Carlo sampling under Gaussian noise.

Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via Randomized Smoothing"
(arXiv:1902.02918). The smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c).
- PREDICT: n samples; return the top class unless a two-sided binomial test of the top two counts
  cannot reject equality at level alpha (then abstain).
- CERTIFY: n0 samples select the class cA; n fresh samples count it; pA_lower is the one-sided
  (1 - alpha) Clopper-Pearson lower bound on P(f(x + noise) = cA); certify radius sigma * Phi^-1(pA_lower)
  when pA_lower > 1/2, else abstain. With probability at least 1 - alpha the certificate is correct.
Defaults follow the paper (REFERENCES.md s.7): n0 = 100, n = 100,000, alpha = 0.001.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from convopt.errors import ConvoptError

ABSTAIN = -1
DEFAULT_N0, DEFAULT_N, DEFAULT_ALPHA = 100, 100_000, 0.001


def _check(sigma: float, alpha: float, *counts: int) -> None:
    if not sigma > 0:
        raise ConvoptError(f"sigma {sigma!r}: the noise level must be positive")
    if not 0 < alpha < 1:
        raise ConvoptError(f"alpha {alpha!r}: expected a failure probability in (0, 1), e.g. 0.001")
    if any(c < 1 for c in counts):
        raise ConvoptError(f"sample counts {counts}: expected positive integers")


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    return 0.0 if successes == 0 else float(beta.ppf(alpha, successes, trials - successes + 1))


def sample_counts(model: nn.Module, x: torch.Tensor, sigma: float, num: int, *, batch_size: int = 1000,
                  generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """(K,) int64 counts of f's top-1 class over `num` draws of x + N(0, sigma^2 I); x is one input (C, ...)."""
    counts: torch.Tensor | None = None
    remaining = num
    with torch.no_grad():
        while remaining > 0:
            size = min(batch_size, remaining)
            batch = x.unsqueeze(0).expand(size, *x.shape)
            noise = torch.randn(batch.shape, generator=generator, dtype=x.dtype).to(x.device) * sigma
            logits = model(batch + noise)
            classes = logits.argmax(dim=1)
            if counts is None:
                counts = torch.zeros(logits.shape[1], dtype=torch.int64)
            counts += torch.bincount(classes, minlength=logits.shape[1]).cpu()
            remaining -= size
    return counts


def predict(model: nn.Module, x: torch.Tensor, sigma: float, *, n: int = DEFAULT_N0, alpha: float = DEFAULT_ALPHA,
            batch_size: int = 1000, generator: torch.Generator | None = None) -> int:  # fmt: skip
    """The smoothed prediction of one input, or ABSTAIN (-1) when the top two classes are not separated."""
    _check(sigma, alpha, n)
    counts = sample_counts(model, x, sigma, n, batch_size=batch_size, generator=generator)
    top2 = counts.topk(min(2, len(counts)))
    first = int(top2.values[0])
    second = int(top2.values[1]) if len(top2.values) > 1 else 0
    if binomtest(first, first + second, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(top2.indices[0])


def certify(model: nn.Module, x: torch.Tensor, sigma: float, *, n0: int = DEFAULT_N0, n: int = DEFAULT_N,
            alpha: float = DEFAULT_ALPHA, batch_size: int = 1000, generator: torch.Generator | None = None,
            ) -> tuple[int, float, float]:  # fmt: skip
    """CERTIFY of Cohen et al. for one input x (C, ...).

    Returns:
        (class, radius, pA_lower): the certified class and L2 radius, or (ABSTAIN, 0.0, pA_lower).
    """
    _check(sigma, alpha, n0, n)
    selection = sample_counts(model, x, sigma, n0, batch_size=batch_size, generator=generator)
    top = int(selection.argmax())
    counts = sample_counts(model, x, sigma, n, batch_size=batch_size, generator=generator)
    p_lower = lower_confidence_bound(int(counts[top]), n, alpha)
    if p_lower <= 0.5:
        return ABSTAIN, 0.0, p_lower
    return top, float(sigma * norm.ppf(p_lower)), p_lower


@dataclass
class SmoothingReport:
    """Certified accuracy of the smoothed version of one model."""

    sigma: float
    n0: int
    n: int
    alpha: float
    num_samples: int
    predictions: list[int] = field(default_factory=list)  # certified class or ABSTAIN, per sample
    radii: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)  # certified and equal to the label
    curve: list[tuple[float, float]] = field(default_factory=list)  # (radius, certified accuracy)

    @property
    def abstain_rate(self) -> float:
        return sum(p == ABSTAIN for p in self.predictions) / max(self.num_samples, 1)

    @property
    def certified_accuracy(self) -> float:
        """At radius 0: the smoothed classifier's certified (non-abstaining, correct) accuracy."""
        return sum(self.correct) / max(self.num_samples, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sigma": self.sigma, "n0": self.n0, "n": self.n, "alpha": self.alpha, "num_samples": self.num_samples,
            "certified_accuracy": self.certified_accuracy, "abstain_rate": self.abstain_rate,
            "predictions": list(self.predictions), "radii": list(self.radii), "correct": list(self.correct),
            "curve": [{"radius": r, "certified_accuracy": a} for r, a in self.curve],
        }  # fmt: skip


def certified_accuracy_curve(radii: Sequence[float], correct: Sequence[bool], grid: Sequence[float]):
    """[(r, fraction of samples certified correct with radius >= r)] for each r of `grid`."""
    total = max(len(radii), 1)
    return [(float(r), sum(ok and radius >= r for radius, ok in zip(radii, correct)) / total) for r in grid]


def smoothing_certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, *, n0: int = DEFAULT_N0,
                      n: int = DEFAULT_N, alpha: float = DEFAULT_ALPHA, batch_size: int = 1000, seed: int = 0,
                      grid: Sequence[float] | None = None) -> SmoothingReport:  # fmt: skip
    """CERTIFY every input of `x` (N, ...) and the certified accuracy against radius (default grid: 0 to
    4 sigma in 17 steps)."""
    generator = torch.Generator().manual_seed(seed)
    report = SmoothingReport(sigma=float(sigma), n0=n0, n=n, alpha=alpha, num_samples=len(x))
    for xi, yi in zip(x, y):
        label, radius, _ = certify(model, xi, sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                                   generator=generator)  # fmt: skip
        report.predictions.append(label)
        report.radii.append(radius)
        report.correct.append(label == int(yi))
    grid = grid if grid is not None else [4 * sigma * i / 16 for i in range(17)]
    report.curve = certified_accuracy_curve(report.radii, report.correct, grid)
    return report


def gaussian_radius(p: float, sigma: float) -> float:
    """sigma * Phi^-1(p): the L2 radius certified by a class probability p under noise sigma."""
    return float(sigma * norm.ppf(p))


__all__ = ["ABSTAIN", "SmoothingReport", "certified_accuracy_curve", "certify", "gaussian_radius",
           "lower_confidence_bound", "predict", "sample_counts", "smoothing_certify"]  # fmt: skip
