"""Randomized smoothing: certificates on a linear classifier, whose true robust radius is known, are wrong
at most an alpha fraction of the time; the Clopper-Pearson bound and PREDICT's abstention behave as specified."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from convopt.errors import ConvoptError
from convopt.verify import ABSTAIN, certify, lower_confidence_bound, predict, smoothing_certify


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_classifier(dims: int = 10, seed: int = 0) -> tuple[nn.Linear, torch.Tensor, float]:
    """Two classes split by the hyperplane w.x + b = 0: returns the model, its unit normal, and b / ||w||."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(dims, 2)
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, dims, generator=generator))
        model.bias.copy_(torch.randn(2, generator=generator))
    w = (model.weight[0] - model.weight[1]).detach()
    b = float((model.bias[0] - model.bias[1]).detach())
    return model.eval(), w / w.norm(), b / float(w.norm())


def test_clopper_pearson_lower_bound():
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), rel=1e-9)  # (p^n = alpha)
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    low = [lower_confidence_bound(k, 1000, 0.01) for k in (500, 700, 900, 990)]
    assert low == sorted(low) and all(b < k / 1000 for b, k in zip(low, (500, 700, 900, 990)))


def test_certificates_exceed_the_true_radius_at_most_alpha_of_the_time():
    """g = f for a linear binary classifier under isotropic noise, and its exact L2 robust radius is the distance
    to the hyperplane; a certificate is wrong when it names the other class or a radius beyond that distance."""
    model, normal, offset = linear_classifier()
    sigma, alpha, trials = 0.5, 0.05, 1000
    generator = torch.Generator().manual_seed(1)
    # Distances to the hyperplane of 0.1 .. 1.2 sigma: pA from 0.54 to 0.88, where the bound is tightest.
    distances = sigma * (0.1 + 1.1 * torch.rand(trials, generator=generator))
    sides = torch.where(torch.rand(trials, generator=generator) < 0.5, 1.0, -1.0)
    wrong = certified = 0
    ratio_sum = 0.0
    for distance, side in zip(distances.tolist(), sides.tolist()):
        along = torch.randn(10, generator=generator)
        along -= (along @ normal) * normal  # a random point of the hyperplane, moved off it by `distance`
        x = along - offset * normal + side * distance * normal
        true_class = int(model(x.unsqueeze(0)).argmax())
        label, radius, _ = certify(model, x, sigma, n0=20, n=200, alpha=alpha, generator=generator)
        if label == ABSTAIN:
            continue
        certified += 1
        ratio_sum += radius / distance
        if label != true_class or radius > distance:
            wrong += 1
    limit = alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert wrong / trials <= limit, f"{wrong} wrong certificates in {trials} trials"
    assert certified > trials / 2 and ratio_sum / certified > 0.3  # the certificates are not vacuous


def test_certify_radius_formula_and_abstention():
    model, normal, offset = linear_classifier(seed=2)
    far = -offset * normal + 5.0 * normal  # 5 sigma from the hyperplane: every noisy sample is class 0
    label, radius, p_lower = certify(model, far, 1.0, n0=50, n=500, alpha=0.001,
                                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert label == int(model(far.unsqueeze(0)).argmax()) and p_lower == pytest.approx(0.001 ** (1 / 500))
    assert radius == pytest.approx(norm.ppf(p_lower)) and 2.0 < radius < 5.0
    on_plane = -offset * normal  # pA = 1/2 exactly: the lower bound stays below 1/2
    assert certify(model, on_plane, 1.0, n0=50, n=500, alpha=0.001)[:2] == (ABSTAIN, 0.0)
    abstained = sum(predict(model, on_plane, 1.0, n=200, alpha=0.05) == ABSTAIN for _ in range(40))
    assert abstained >= 30  # PREDICT abstains with probability >= 1 - alpha on a tie
    assert predict(model, far, 1.0, n=100, alpha=0.001) == label


def test_smoothing_report_and_certified_accuracy_curve():
    model, normal, offset = linear_classifier(seed=3)
    x = torch.stack([-offset * normal + d * normal for d in (-3.0, -1.0, 0.5, 2.0, 4.0)])
    y = model(x).argmax(1).detach()
    y[0] = 1 - y[0]  # one wrong label: certified for the other class, so it never counts
    report = smoothing_certify(model, x, y, 1.0, n0=50, n=1000, alpha=0.01, grid=[0.0, 0.5, 1.0, 2.0])
    assert report.predictions[0] != int(y[0]) and report.correct[0] is False
    accuracies = [a for _, a in report.curve]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] <= 4 / 5
    assert report.curve[-1][1] == pytest.approx(1 / 5)  # only the point 4 sigma away keeps radius >= 2
    data = report.to_dict()
    assert data["n"] == 1000 and len(data["radii"]) == 5 and data["curve"][0]["radius"] == 0.0
    with pytest.raises(ConvoptError, match="sigma"):
        certify(model, x[0], 0.0)
    with pytest.raises(ConvoptError, match="alpha"):
        certify(model, x[0], 1.0, alpha=1.5)
