"""Winograd F(2,3) / F(4,3) / F(6,3): the transforms, the fp32 error envelope, layouts, groups and refusals.

The shared contract (OpInfo samples, hypothesis cases, gradcheck) lives in test_kernels_contract.py.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import convopt
from convopt.kernels import get_algorithm
from convopt.kernels.reference import reference_conv
from convopt.kernels.winograd_transforms import (
    POINTS,
    cook_toom_exact,
    kron_matrices,
    multiplications_per_output,
    winograd_matrices,
)
from convopt.spec import ConvSpec
from convopt.testing import normwise_error, normwise_limit

TILES = [2, 4, 6]
NAMES = [f"winograd_f{m}" for m in TILES]
RESNET18_3X3 = [(64, 56), (128, 28), (256, 14), (512, 7)]  # (channels, spatial) of the stride-1 layers


def correlate(d, g):
    return [sum(g[k] * d[i + k] for k in range(len(g))) for i in range(len(d) - len(g) + 1)]


@pytest.mark.parametrize("m", TILES)
def test_transforms_compute_the_1d_correlation_exactly(m):
    at, g_mat, bt = cook_toom_exact(m, 3, POINTS[m])
    a = m + 2
    for trial in range(5):  # rational arithmetic: the identity holds with no rounding at all
        d = [Fraction((7 * trial + 3 * i) % 11 - 5) for i in range(a)]
        g = [Fraction((5 * trial + 2 * k) % 7 - 3, 2) for k in range(3)]
        gg = [sum(row[k] * g[k] for k in range(3)) for row in g_mat]
        bd = [sum(row[j] * d[j] for j in range(a)) for row in bt]
        y = [sum(row[j] * gg[j] * bd[j] for j in range(a)) for row in at]
        assert y == correlate(d, g)
    at64, g64, bt64 = winograd_matrices(m)
    assert at64.shape == (m, a) and g64.shape == (a, 3) and bt64.shape == (a, a) and at64.dtype == torch.float64
    d, g = torch.randn(a, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    expected = torch.tensor(correlate(d.tolist(), g.tolist()), dtype=torch.float64)
    torch.testing.assert_close(at64 @ ((g64 @ g) * (bt64 @ d)), expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("m", TILES)
def test_kron_forms_compute_the_2d_tile(m):
    at2, g2, bt2 = kron_matrices(m)
    a = m + 2
    d, g = torch.randn(a, a, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    y = at2 @ ((g2 @ g.reshape(-1)) * (bt2 @ d.reshape(-1)))
    expected = F.conv2d(d.view(1, 1, a, a), g.view(1, 1, 3, 3)).reshape(-1)  # conv2d is correlation
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_multiplication_counts_match_lavin_and_gray():
    assert [multiplications_per_output(m) for m in TILES] == [4.0, 2.25, 64 / 36]


def test_rejects_wrong_number_of_points():
    with pytest.raises(ValueError, match="needs 5 distinct finite points"):
        cook_toom_exact(4, 3, (Fraction(0), Fraction(1), Fraction(1), Fraction(2), Fraction(3)))


def run(name, x, w, bias=None, **kwargs):
    return convopt.conv(x, w, bias, **kwargs, algorithm=name)


def error(name, x, w, bias=None, **kwargs):
    spec = ConvSpec.from_weight(w, bias=bias is not None, **kwargs)
    y = run(name, x, w, bias, **kwargs)
    return normwise_error(y, reference_conv(x, w, bias, spec), x, w, spec)


@pytest.mark.parametrize("name", NAMES)
def test_fp32_error_envelope_on_resnet18_layers(name):
    """Measured (batch 8, two seeds): F(2,3) <= 1.1e-7, F(4,3) <= 8e-7, F(6,3) <= 3.6e-6."""
    envelope = {"winograd_f2": 3e-7, "winograd_f4": 2e-6, "winograd_f6": 8e-6}[name]
    assert envelope <= normwise_limit(name, torch.float32)
    for c, hw in RESNET18_3X3:
        x, w = torch.randn(1, c, hw, hw), torch.randn(c, c, 3, 3)
        assert error(name, x, w, padding=1) <= envelope, (name, c, hw)


@pytest.mark.parametrize("name", NAMES)
def test_float64_is_near_exact(name):
    x, w = torch.randn(2, 8, 13, 11, dtype=torch.float64), torch.randn(5, 8, 3, 3, dtype=torch.float64)
    assert error(name, x, w, padding=1) <= normwise_limit(name, torch.float64)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "case",
    [
        dict(x=(2, 6, 9, 9), w=(6, 1, 3, 3), kwargs=dict(padding=1, groups=6)),  # depthwise
        dict(x=(2, 3, 10, 7), w=(6, 1, 3, 3), kwargs=dict(padding=1, groups=3)),  # depthwise, multiplier 2
        dict(x=(1, 8, 11, 12), w=(6, 4, 3, 3), kwargs=dict(padding=(2, 0), groups=2)),  # grouped
        dict(x=(3, 5, 13, 9), w=(7, 5, 3, 3), kwargs=dict(padding="same")),
        dict(x=(1, 4, 5, 17), w=(3, 4, 3, 3), kwargs=dict(padding="valid")),
        dict(x=(2, 3, 3, 3), w=(2, 3, 3, 3), kwargs=dict(padding=((1, 2), (0, 3)))),  # per-side
    ],
    ids=["depthwise", "depthwise-x2", "grouped", "same", "valid", "per-side"],
)
def test_groups_and_padding_match_the_reference(name, case):
    x, w, b = torch.randn(case["x"]), torch.randn(case["w"]), torch.randn(case["w"][0])
    y = run(name, x, w, b, **case["kwargs"])
    assert y.shape == ConvSpec.from_weight(w, bias=True, **case["kwargs"]).output_shape(x.shape)
    assert error(name, x, w, b, **case["kwargs"]) <= normwise_limit(name, torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_memory_format_follows_the_input(name):
    x, w, b = torch.randn(2, 16, 10, 10), torch.randn(8, 16, 3, 3), torch.randn(8)
    y = run(name, x, w, b, padding=1)
    y_cl = run(name, x.contiguous(memory_format=torch.channels_last), w, b, padding=1)
    assert y.is_contiguous() and y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_cl)


@pytest.mark.parametrize("name", NAMES)
def test_prepared_filters_are_reused_and_gradients_flow(name):
    algorithm = get_algorithm(name)
    m = int(name[-1])
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    spec = ConvSpec.from_weight(w, bias=True, padding=1)
    u = algorithm.prepare(w, spec)
    assert u.shape == ((m + 2) ** 2, 1, 4, 6) and u.dtype == w.dtype
    y = algorithm.run(x, u, b, spec)  # run consumes the prepared filters; it never sees `w`
    expected = F.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(y, expected)
    grads = torch.autograd.grad(y.square().sum(), (x, w, b))
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, w, b))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs, dtype, reason",
    [
        ((1, 2, 8, 8), (2, 2, 3, 3), dict(stride=2), torch.float32, "stride must be 1"),
        ((1, 2, 8, 8), (2, 2, 5, 5), {}, torch.float32, r"kernel must be 3x3"),
        ((1, 2, 8, 8), (2, 2, 3, 3), dict(dilation=2), torch.float32, "dilation must be 1"),
        ((1, 2, 8, 8), (2, 2, 3, 3), {}, torch.bfloat16, "dtype torch.bfloat16 is not supported"),
        ((1, 2, 8), (2, 2, 3), {}, torch.float32, "2-d only"),
    ],
    ids=["stride2", "5x5", "dilation2", "bf16", "1d"],
)
def test_refusals_name_the_reason(x_shape, w_shape, kwargs, dtype, reason):
    x, w = torch.randn(x_shape, dtype=dtype), torch.randn(w_shape, dtype=dtype)
    with pytest.raises(convopt.UnsupportedConvError, match=reason):
        convopt.conv(x, w, **kwargs, algorithm="winograd_f4")
