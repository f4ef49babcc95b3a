"""Quantization primitives and calibration observers: exact arithmetic, known distributions, STE gradients."""

from __future__ import annotations

import pytest
import torch

from convopt.errors import ConfigError
from convopt.kernels.observers import (
    EntropyObserver, MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver, PercentileObserver,
)  # fmt: skip
from convopt.kernels.quantize import QuantScheme, choose_qparams, dequantize, fake_quantize, quantize

INT8 = QuantScheme()
UINT8_AFFINE = QuantScheme(signed=False, symmetric=False)


def test_integer_ranges():
    assert (INT8.qmin, INT8.qmax) == (-128, 127)
    assert (QuantScheme(narrow_range=True).qmin, QuantScheme(bits=4).qmin, QuantScheme(bits=4).qmax) == (-127, -8, 7)
    assert (UINT8_AFFINE.qmin, UINT8_AFFINE.qmax) == (0, 255)
    with pytest.raises(ConfigError, match="bits"):
        QuantScheme(bits=9)


def test_hand_computed_symmetric_case():
    scale, zero = choose_qparams(torch.tensor(-2.0), torch.tensor(1.0), INT8)
    assert float(scale) == pytest.approx(2.0 / 127.5) and int(zero) == 0  # amax / ((qmax - qmin) / 2)
    half = torch.tensor(0.5)  # an exact scale, so the halves below are exact
    q = quantize(torch.tensor([0.0, 1.25, -1.25, 0.75, 100.0, -100.0]), half, zero, INT8)
    # 2.5 -> 2 and -2.5 -> -2 (half to even), 1.5 -> 2, then saturation at 127 / -128
    assert q.tolist() == [0, 2, -2, 2, 127, -128] and q.dtype == torch.int8


def test_affine_range_keeps_zero_exact_and_errors_within_half_a_step():
    x = torch.linspace(0.3, 6.0, 1001)  # does not contain 0: the range is widened to include it
    scale, zero = choose_qparams(x.min(), x.max(), UINT8_AFFINE)
    assert float(dequantize(quantize(torch.zeros(1), scale, zero, UINT8_AFFINE), scale, zero, UINT8_AFFINE)) == 0.0
    error = (dequantize(quantize(x, scale, zero, UINT8_AFFINE), scale, zero, UINT8_AFFINE) - x).abs().max()
    assert float(error) <= float(scale) / 2 + 1e-7


def test_per_channel_weights():
    w = torch.randn(8, 4, 3, 3) * torch.arange(1, 9).view(8, 1, 1, 1)  # very different channel ranges
    scheme = QuantScheme(per_channel=True, axis=0)
    observer = MinMaxObserver(axis=0)
    observer.update(w)
    scale, zero = observer.qparams(scheme)
    assert scale.shape == (8,) and torch.all(zero == 0)
    error = (dequantize(quantize(w, scale, zero, scheme), scale, zero, scheme) - w).abs()
    assert torch.all(error <= scale.view(8, 1, 1, 1) / 2 + 1e-6)


def test_straight_through_estimator_gradient():
    scale, zero = torch.tensor(0.1), torch.tensor(0)
    x = torch.tensor([0.05, 0.5, -0.3, 20.0, -20.0], requires_grad=True)
    y = fake_quantize(x, scale, zero, INT8)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]  # passes inside the range, zero where it saturates
    assert torch.allclose(y, dequantize(quantize(x, scale, zero, INT8), scale, zero, INT8))


def test_minmax_and_moving_average_observers():
    observer, moving = MinMaxObserver(), MovingAverageMinMaxObserver(momentum=0.5)
    for batch in (torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 1.0])):
        observer.update(batch)
        moving.update(batch)
    assert [float(v) for v in observer.range()] == [-3.0, 2.0]
    assert [float(v) for v in moving.range()] == [-2.0, 1.5]  # -1 + 0.5 (-3 + 1), 2 + 0.5 (1 - 2)
    with pytest.raises(ConfigError, match="saw no data"):
        MinMaxObserver().qparams(INT8)


def test_percentile_observer_matches_the_normal_quantile():
    generator = torch.Generator().manual_seed(0)
    observer = PercentileObserver(99.0)
    for _ in range(4):
        observer.update(torch.randn(250_000, generator=generator))
    # P(|z| <= 2.5758) = 0.99 for a standard normal
    assert observer.threshold() == pytest.approx(2.5758, abs=0.03)


def quantization_mse(data, scale, zero):
    return float((fake_quantize(data, scale, zero, INT8) - data).pow(2).mean())


def test_mse_observer_finds_a_better_clip_than_the_full_range_on_heavy_tails():
    torch.manual_seed(1)
    data = torch.distributions.Laplace(0.0, 1.0).sample((400_000,))  # heavy tails: max ~ 13
    observer = MSEObserver(bits=4)
    observer.update(data)
    assert observer.threshold() < float(data.abs().max())
    scale, zero = observer.qparams(QuantScheme(bits=4))
    full_scale, _ = choose_qparams(data.min(), data.max(), QuantScheme(bits=4))
    scheme = QuantScheme(bits=4)
    assert float((fake_quantize(data, scale, zero, scheme) - data).pow(2).mean()) < float(
        (fake_quantize(data, full_scale, zero, scheme) - data).pow(2).mean())


def test_entropy_observer_clips_rare_outliers():
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(200_000, generator=generator)
    data[:5] = 40.0  # five outliers would waste most of the int8 range
    observer = EntropyObserver()
    observer.update(data)
    assert 2.0 < observer.threshold() < 20.0
    scale, zero = observer.qparams(INT8)
    body = data[5:]
    full_scale, _ = choose_qparams(data.min(), data.max(), INT8)
    assert quantization_mse(body, scale, zero) < quantization_mse(body, full_scale, zero)


def test_entropy_observer_keeps_most_of_a_gaussian_and_all_of_a_uniform():
    # Regression: the smallest clip (one histogram bin per level) used to win with a trivial KL of 0.
    generator = torch.Generator().manual_seed(2)
    gaussian, uniform = EntropyObserver(), EntropyObserver()
    gaussian.update(torch.randn(200_000, generator=generator))
    uniform.update(torch.rand(200_000, generator=generator))
    assert 2.5 < gaussian.threshold() < 5.0
    assert uniform.threshold() > 0.95
