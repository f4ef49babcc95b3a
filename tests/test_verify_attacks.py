"""FGSM and PGD: exact on linear models, inside the budget and the valid range, honest about vanishing gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from convopt.errors import ConvoptError
from convopt.models import default_model
from convopt.verify import fgsm, pgd, robust_accuracy_curve
from convopt.verify.attacks import input_gradient, perturbation_norm


pytestmark = pytest.mark.usefixtures("one_thread")


def binary_linear(dims: int = 20, seed: int = 0):
    """A 2-class linear model, 300 inputs, labels (a tenth of them wrong) and each input's margin."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(dims, 2)
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, dims, generator=generator) * 0.5)
        model.bias.copy_(torch.randn(2, generator=generator) * 0.5)
    x = torch.randn(300, dims, generator=generator)
    y = model(x).argmax(1).detach()
    y[:30] = 1 - y[:30]
    logits = model(x).detach()
    margin = logits.gather(1, y.view(-1, 1)).squeeze(1) - logits.gather(1, (1 - y).view(-1, 1)).squeeze(1)
    return model, x, y, margin


@pytest.mark.parametrize("norm, dual", [("inf", 1), ("2", 2)])
def test_fgsm_on_a_linear_model_flips_exactly_the_points_within_reach(norm, dual):
    model, x, y, margin = binary_linear()
    weight_gap = (model.weight[0] - model.weight[1]).detach().norm(p=dual)  # same for both labels
    for eps in (0.05, 0.2, 0.5):
        x_adv, zero_grad = fgsm(model, x, y, eps, norm=norm, valid_range=None)
        flipped = model(x_adv).argmax(1) != y
        expected = margin < eps * weight_gap
        clear = (margin - eps * weight_gap).abs() > 1e-4  # away from exact ties, where float rounding decides
        assert bool((flipped == expected)[clear].all()) and int(clear.sum()) > 290
        assert 0 < int(expected.sum()) < len(y) and not bool(zero_grad.any())
        assert float(perturbation_norm(x_adv, x, norm).max()) <= eps + 1e-6


@pytest.mark.parametrize("norm, dual, random_start", [("inf", 1, True), ("2", 2, False)])
def test_pgd_reaches_the_linear_optimum_and_accuracy_falls_with_eps(norm, dual, random_start):
    model, x, y, margin = binary_linear(seed=1)
    weight_gap = (model.weight[0] - model.weight[1]).detach().norm(p=dual)
    eps_values = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8]
    curve = robust_accuracy_curve(model, x, y, eps_values, attack="pgd", norm=norm, steps=12, valid_range=None,
                                  random_start=random_start)
    expected = [float((margin >= e * weight_gap).double().mean()) for e in eps_values]
    measured = [p.robust_accuracy for p in curve.points]
    assert measured == pytest.approx(expected, abs=1.5 / len(y))  # at most one tie decided the other way
    assert measured == sorted(measured, reverse=True) and measured[0] == pytest.approx(curve.clean_accuracy)
    assert measured[-1] < measured[0]
    x_adv, _ = pgd(model, x, y, 0.2, norm=norm, steps=12, random_start=random_start, valid_range=None)
    assert float(perturbation_norm(x_adv, x, norm).max()) <= 0.2 + 1e-6


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_perturbations_stay_in_the_box_and_the_valid_range(norm):
    model = default_model()
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    x[:, :, :4] = 0.0  # pixels on the edge of the range, as in real digits
    x[:, :, -4:] = 1.0
    y = torch.arange(12) % 10
    eps = 0.3 if norm == "inf" else 2.0
    for x_adv, _ in (fgsm(model, x, y, eps, norm=norm),
                     pgd(model, x, y, eps, norm=norm, steps=5, restarts=2, step_size=eps)):  # fmt: skip
        assert float(perturbation_norm(x_adv, x, norm).max()) <= eps + 1e-6
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        assert float(perturbation_norm(x_adv, x, norm).max()) > 0.5 * eps  # the attack did move


def test_robust_accuracy_never_exceeds_clean_accuracy_on_a_conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.rand(40, 1, 8, 8)
    y = model(x).argmax(1).detach()
    for attack in ("fgsm", "pgd"):
        curve = robust_accuracy_curve(model, x, y, [0.2, 0.01, 0.05], attack=attack, steps=5)
        values = [p.robust_accuracy for p in curve.points]
        assert [p.eps for p in curve.points] == [0.01, 0.05, 0.2]
        assert values == sorted(values, reverse=True) and values[0] <= curve.clean_accuracy == 1.0
        assert values[-1] < 1.0 and all(p.max_perturbation <= p.eps + 1e-6 for p in curve.points)


class RoundedInput(nn.Module):
    """A stand-in for a quantized model: inputs rounded to 1/4 steps, so the input gradient is zero."""

    def __init__(self, float_model: nn.Module) -> None:
        super().__init__()
        self.float_model = float_model

    def forward(self, x):
        return self.float_model(torch.round(x * 4) / 4)


def test_vanishing_gradients_are_reported_and_a_float_surrogate_breaks_through():
    model, x, y, _ = binary_linear(seed=3)
    x = torch.round(x * 4) / 4
    quantized = RoundedInput(copy.deepcopy(model))
    y = quantized(x).argmax(1).detach()
    assert float(input_gradient(quantized, x, y).abs().max()) == 0.0
    blind = robust_accuracy_curve(quantized, x, y, [0.5], attack="fgsm", valid_range=None)
    assert blind.points[0].zero_gradient_fraction == 1.0 and "float surrogate" in blind.warnings[0]
    assert blind.points[0].robust_accuracy == 1.0
    guided = robust_accuracy_curve(quantized, x, y, [0.5], attack="fgsm", valid_range=None, surrogate=model)
    assert not guided.warnings and guided.surrogate and guided.points[0].robust_accuracy < 0.9


def test_detached_models_give_zero_gradients_not_errors():
    class Detached(nn.Module):
        def forward(self, x):
            with torch.no_grad():
                return torch.stack([x.sum(1), -x.sum(1)], dim=1)

    grad = input_gradient(Detached(), torch.rand(3, 4), torch.zeros(3, dtype=torch.long))
    assert grad.shape == (3, 4) and float(grad.abs().max()) == 0.0


def test_bad_attack_arguments_raise_one_line_errors():
    model, x = nn.Linear(4, 2), torch.rand(3, 4)
    y = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ConvoptError, match=r"outside the valid range \[0.0, 1.0\]"):
        fgsm(model, x * 3, y, 0.1)
    with pytest.raises(ConvoptError, match="norm 'l1'"):
        pgd(model, x, y, 0.1, norm="l1")
    with pytest.raises(ConvoptError, match="non-negative"):
        fgsm(model, x, y, -0.1)
    with pytest.raises(ConvoptError, match="attack 'cw'"):
        robust_accuracy_curve(model, x, y, [0.1], attack="cw")
