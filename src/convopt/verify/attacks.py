"""Gradient attacks: FGSM and PGD under L-infinity and L2 budgets, and robust accuracy against epsilon.

- FGSM: Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples"
  (arXiv:1412.6572): one step of size eps along sign(grad) (L-inf), or along grad / ||grad||_2 (L2, the
  "fast gradient method").
- PGD: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"
  (arXiv:1706.06083): a random start in the ball, then `steps` steps of size `step_size` (default
  2.5 eps / steps), each projected back onto the eps-ball and the valid input range.

Every adversarial input stays within eps (up to float rounding, far below 1e-6) of the original and inside
`valid_range` (REFERENCES.md s.7). Quantized or otherwise non-differentiable models give zero gradients:
the fraction of such inputs is reported, with a warning, and a float `surrogate` model can supply the
gradients instead (the attack is still judged on the attacked model).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from convopt.errors import ConvoptError

NORMS = ("inf", "2")
ATTACKS = ("fgsm", "pgd")
VANISHING_WARNING_FRACTION = 0.5


def _check(x: torch.Tensor, eps: float, norm: str, valid_range: tuple[float, float] | None) -> None:
    if norm not in NORMS:
        raise ConvoptError(f"norm {norm!r}: expected one of {', '.join(NORMS)}")
    if not eps >= 0:
        raise ConvoptError(f"eps {eps!r}: expected a non-negative attack radius")
    if valid_range is not None:
        low, high = valid_range
        if float(x.min()) < low - 1e-6 or float(x.max()) > high + 1e-6:
            raise ConvoptError(
                f"inputs span [{float(x.min()):.4g}, {float(x.max()):.4g}], outside the valid range [{low}, {high}]; "
                "pass the range the data actually uses (or None)"
            )


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d cross_entropy(model(x), y) / dx, (N, ...); zeros where the model gives no gradient at all."""
    x = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # Ops without an autograd kernel (oneDNN fused convs) warn and give no gradient: reported instead.
            warnings.filterwarnings("ignore", message=".*autograd kernel was not registered.*")
            loss = F.cross_entropy(model(x).float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    except RuntimeError:  # the output does not depend differentiably on x (quantized kernels, detached code)
        grad = None
    return torch.zeros_like(x) if grad is None else grad.detach()


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "inf":
        return grad.sign()
    flat = grad.flatten(1).norm(dim=1).clamp_min(1e-30)
    return grad / flat.view(-1, *([1] * (grad.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, valid_range: tuple[float, float] | None):
    """Nearest point of the eps-ball around x (L-inf: exact; L2: radial scaling), then clipped to the valid
    range; clipping only shrinks each coordinate of the perturbation, so the result stays in the ball."""
    delta = x_adv - x
    if norm == "inf":
        x_adv = torch.maximum(torch.minimum(x + delta.clamp(-eps, eps), x + eps), x - eps)
    else:
        norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
        x_adv = x + delta * torch.where(norms > eps, eps / norms.clamp_min(1e-30), torch.ones_like(norms))
    return x_adv.clamp(*valid_range) if valid_range is not None else x_adv


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    if norm == "inf":
        return x + (torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1) * eps
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (x.dim() - 1)))
    dims = x[0].numel()
    radius = eps * torch.rand(len(x), generator=generator, dtype=x.dtype).to(x.device) ** (1.0 / dims)  # uniform
    return x + direction * radius.view(-1, *([1] * (x.dim() - 1)))


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "inf",
         valid_range: tuple[float, float] | None = (0.0, 1.0), surrogate: nn.Module | None = None,
         ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One-step attack (Goodfellow et al. 2015).

    Returns:
        (x_adv, zero_grad): adversarial inputs shaped like `x`, and an (N,) bool mask of the inputs whose
        gradient was exactly zero (nothing to follow: quantized or saturated models).
    """
    _check(x, eps, norm, valid_range)
    grad = input_gradient(surrogate or model, x, y)
    x_adv = project(x + eps * _direction(grad, norm), x, eps, norm, valid_range)
    return x_adv.detach(), grad.flatten(1).abs().amax(dim=1) == 0


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "inf", steps: int = 10,
        step_size: float | None = None, random_start: bool = True, restarts: int = 1,
        valid_range: tuple[float, float] | None = (0.0, 1.0), surrogate: nn.Module | None = None,
        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Projected gradient descent on the cross-entropy loss (Madry et al. 2018).

    Each restart starts at a random point of the ball (when `random_start`); across restarts, the first
    adversarial input found for a sample is kept. Returns (x_adv, zero_grad) as `fgsm` does.
    """
    _check(x, eps, norm, valid_range)
    if steps < 1 or restarts < 1:
        raise ConvoptError(f"steps {steps} and restarts {restarts}: expected positive integers")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    if not alpha >= 0:
        raise ConvoptError(f"step size {step_size!r}: expected a non-negative number")
    best = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    zero_grad = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        x_adv = project(_random_start(x, eps, norm, generator), x, eps, norm, valid_range) if random_start else x
        for _ in range(steps):
            grad = input_gradient(surrogate or model, x_adv, y)
            zero_grad &= grad.flatten(1).abs().amax(dim=1) == 0
            x_adv = project(x_adv + alpha * _direction(grad, norm), x, eps, norm, valid_range)
        with torch.no_grad():
            wrong = model(x_adv).argmax(dim=1) != y
        new = wrong & ~found
        best[new] = x_adv[new]
        best[~found & ~wrong] = x_adv[~found & ~wrong]
        found |= wrong
        if bool(found.all()):
            break
    return best.detach(), zero_grad


def perturbation_norm(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    delta = (x_adv - x).flatten(1).double()
    return delta.abs().amax(dim=1) if norm == "inf" else delta.norm(dim=1)


@dataclass
class AttackPoint:
    eps: float
    robust_accuracy: float  # correct on the clean input and on every attack up to this eps
    attack_success_rate: float  # among clean-correct samples, the fraction broken up to this eps
    max_perturbation: float  # the largest perturbation norm used at this eps (<= eps + 1e-6)
    zero_gradient_fraction: float


@dataclass
class AttackCurve:
    """Robust accuracy of one model under one attack, as a function of eps."""

    attack: str
    norm: str
    clean_accuracy: float
    num_samples: int
    points: list[AttackPoint] = field(default_factory=list)
    steps: int = 1
    step_size: float | None = None
    surrogate: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "points"}
        data["points"] = [dict(p.__dict__) for p in self.points]
        data["warnings"] = list(self.warnings)
        return data


def robust_accuracy_curve(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_values: Sequence[float],
    *,
    attack: str = "pgd",
    norm: str = "inf",
    steps: int = 10,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    valid_range: tuple[float, float] | None = (0.0, 1.0),
    surrogate: nn.Module | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> AttackCurve:
    """Robust accuracy at each eps (ascending). An input broken at a smaller eps counts as broken at every
    larger one (its adversarial example lies in the larger ball too), so the curve never rises and never
    exceeds clean accuracy. `step_size` None: 2.5 eps / steps at each eps."""
    if attack not in ATTACKS:
        raise ConvoptError(f"attack {attack!r}: expected one of {', '.join(ATTACKS)}")
    eps_sorted = sorted(float(e) for e in eps_values)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        correct = torch.cat([model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]
                             for i in range(0, len(x), batch_size)])  # fmt: skip
    curve = AttackCurve(attack, norm, float(correct.double().mean()) if len(y) else 0.0, len(y),
                        steps=steps if attack == "pgd" else 1, step_size=step_size if attack == "pgd" else None,
                        surrogate=surrogate is not None)  # fmt: skip
    robust = correct.clone()
    for eps in eps_sorted:
        largest, zero = 0.0, 0
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            if attack == "fgsm":
                x_adv, zero_grad = fgsm(model, xb, yb, eps, norm=norm, valid_range=valid_range, surrogate=surrogate)
            else:
                x_adv, zero_grad = pgd(model, xb, yb, eps, norm=norm, steps=steps, step_size=step_size,
                                       restarts=restarts, random_start=random_start, valid_range=valid_range,
                                       surrogate=surrogate, generator=generator)  # fmt: skip
            with torch.no_grad():
                robust[start : start + len(xb)] &= model(x_adv).argmax(1) == yb
            largest = max(largest, float(perturbation_norm(x_adv, xb, norm).max()) if len(xb) else 0.0)
            zero += int(zero_grad.sum())
        zero_fraction = zero / max(len(y), 1)
        success = 1.0 - float(robust.sum()) / max(int(correct.sum()), 1)
        curve.points.append(AttackPoint(eps, float(robust.double().mean()) if len(y) else 0.0, success, largest,
                                        zero_fraction))  # fmt: skip
        if zero_fraction >= VANISHING_WARNING_FRACTION and eps > 0:
            curve.warnings.append(
                f"{attack} at eps {eps:g}: gradients vanish for {100 * zero_fraction:.0f}% of inputs (a quantized or "
                "non-differentiable model?); robust accuracy is overestimated: attack through a float surrogate"
            )
    return curve


__all__ = ["ATTACKS", "NORMS", "AttackCurve", "AttackPoint", "fgsm", "input_gradient", "perturbation_norm", "pgd",
           "project", "robust_accuracy_curve"]  # fmt: skip
