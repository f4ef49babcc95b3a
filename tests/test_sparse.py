"""The `sparse` algorithm: exact against the float64 reference at every sparsity, N:M helpers, refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import convopt
from convopt.kernels.dispatch import check_call
from convopt.kernels.reference import reference_conv
from convopt.kernels.registry import get_algorithm
from convopt.kernels.sparse import (
    NMWeight,
    break_even_sparsity,
    is_n_m_sparse,
    n_m_mask,
    prepare,
    sparsity,
)
from convopt.spec import ConvSpec
from convopt.testing import elementwise_ok

# (x shape, weight shape, conv kwargs): 1-D/2-D/3-D, strides, dilations, asymmetric padding, groups.
CASES = {
    "1d": ((2, 6, 40), (8, 6, 5), dict(stride=2, padding=3, dilation=2)),
    "2d": ((2, 8, 11, 9), (12, 8, 3, 3), dict(stride=1, padding=1)),
    "2d-strided-groups": ((1, 8, 13, 10), (6, 4, 3, 2), dict(stride=(2, 3), padding=((1, 2), (0, 1)), groups=2)),
    "2d-depthwise": ((2, 6, 9, 9), (6, 1, 3, 3), dict(stride=2, padding="valid", dilation=2, groups=6)),
    "3d": ((1, 4, 6, 7, 5), (5, 4, 3, 2, 3), dict(stride=(1, 2, 1), padding=1, dilation=(2, 1, 1))),
    "long-1d": ((1, 4, 3000), (4, 4, 3), dict(padding="same")),  # wider than one column block
}


def pruned(shape, fraction, generator):
    w = torch.randn(shape, dtype=torch.float64, generator=generator)
    k = int(round(fraction * w.numel()))
    if k:
        w = w * (w.abs() > w.abs().flatten().kthvalue(k).values)
    return w


def check(x, w, b, kwargs):
    spec = check_call(x, w, b, kwargs.get("stride", 1), kwargs.get("padding", 0), kwargs.get("dilation", 1),
                      kwargs.get("groups", 1))  # fmt: skip
    expected = reference_conv(x, w, b, spec)
    for dtype in (torch.float64, torch.float32):
        cast = [None if t is None else t.to(dtype) for t in (x, w, b)]
        y = convopt.conv(*cast, **kwargs, algorithm="sparse")
        assert y.shape == expected.shape and y.dtype == dtype
        ok, worst = elementwise_ok(y, expected, spec)
        assert ok, f"{dtype}: {worst:.3g}x the tolerance"


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9, 0.99, 1.0], ids=lambda f: f"sparsity{f}")
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_float64_reference(case, fraction):
    g = torch.Generator().manual_seed(hash(case) % 1000)
    x_shape, w_shape, kwargs = CASES[case]
    x = torch.randn(x_shape, dtype=torch.float64, generator=g)
    w = pruned(w_shape, fraction, g)
    b = torch.randn(w_shape[0], dtype=torch.float64, generator=g)
    check(x, w, b, kwargs)
    check(x, w, None, kwargs)


def test_all_zero_weight_gives_the_bias_and_stores_nothing():
    x, w, b = torch.randn(2, 4, 7, 7), torch.zeros(3, 4, 3, 3), torch.tensor([1.0, -2.0, 0.5])
    prepared = prepare(w, ConvSpec.from_weight(w))
    assert prepared.taps == () and prepared.nnz == 0 and prepared.density == 0.0
    y = convopt.conv(x, w, b, padding=1, algorithm="sparse")
    torch.testing.assert_close(y, b.view(1, 3, 1, 1).expand(2, 3, 7, 7))
    assert not convopt.conv(x, w, algorithm="sparse").any()


def test_prepared_form_counts_only_the_nonzeros():
    g = torch.Generator().manual_seed(1)
    w = pruned((16, 8, 3, 3), 0.9, g).float()
    spec = ConvSpec.create(16, 16, (3, 3), padding=1, groups=2)
    prepared = prepare(w, spec)
    assert prepared.nnz == int((w != 0).sum())
    assert abs(sparsity(w) - (1 - prepared.density)) < 1e-12
    assert all(c.shape == (16, 16) for _, c in prepared.taps)  # block-diagonal over the 2 groups
    assert prepared.macs(spec, (2, 16, 10, 10)) == prepared.nnz * 2 * 10 * 10
    assert prepared.macs(spec, (2, 16, 10, 10)) < spec.macs((2, 16, 10, 10)) * 0.2


def test_batch_zero_unbatched_and_bias_left_untouched():
    w, b = torch.randn(3, 2, 3), torch.randn(3)
    before = b.clone()
    assert convopt.conv(torch.randn(0, 2, 9), w, b, algorithm="sparse").shape == (0, 3, 7)
    y = convopt.conv(torch.randn(2, 9), w, b, algorithm="sparse")
    assert y.shape == (3, 7)
    torch.testing.assert_close(b, before)  # the output buffer starts as a copy of the bias, never an alias


def test_gradients_reach_input_bias_and_the_nonzero_weights_only():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = pruned((6, 2, 3, 3), 0.6, g).requires_grad_(True)
    b = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    grad_out = torch.randn(2, 6, 8, 8, dtype=torch.float64, generator=g)
    got = torch.autograd.grad(convopt.conv(x, w, b, padding=1, groups=2, algorithm="sparse"), (x, w, b), grad_out)
    want = torch.autograd.grad(F.conv2d(x, w, b, padding=1, groups=2), (x, w, b), grad_out)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[2], want[2])
    mask = w.detach() != 0
    torch.testing.assert_close(got[1][mask], want[1][mask])
    assert not got[1][~mask].any()  # pruned weights stay pruned (pattern fixed at prepare time)


def test_n_m_mask_keeps_the_n_largest_of_every_m_input_channels():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(5, 8, 3, 3, generator=g)
    mask = n_m_mask(w, 2, 4)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    groups = mask.reshape(5, 2, 4, 3, 3)
    assert (groups.sum(dim=2) == 2).all()
    magnitude = w.abs().reshape(5, 2, 4, 3, 3)
    kept_min = torch.where(groups, magnitude, torch.inf).amin(dim=2)
    dropped_max = torch.where(groups, -torch.inf, magnitude).amax(dim=2)
    assert (kept_min >= dropped_max).all()
    assert is_n_m_sparse(w * mask, 2, 4) and not is_n_m_sparse(w, 2, 4)
    assert (n_m_mask(w, 1, 2).reshape(5, 4, 2, 3, 3).sum(dim=2) == 1).all()
    with pytest.raises(ValueError, match="divisible by m=4"):
        n_m_mask(torch.randn(4, 3, 3, 3))
    assert not is_n_m_sparse(torch.zeros(4, 3, 3, 3))


def test_prepare_keeps_the_2_4_form_compact_and_exact():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(8, 16, 3, 3, generator=g)
    w = w * n_m_mask(w)
    w[0, :4, 0, 0] = torch.tensor([0.0, 1.5, 0.0, 0.0])  # a group with fewer than n non-zeros
    prepared = prepare(w, ConvSpec.from_weight(w))
    nm = prepared.n_m
    assert isinstance(nm, NMWeight) and nm.positions.dtype == torch.uint8
    assert nm.values.shape == (8, 4, 2, 3, 3)
    torch.testing.assert_close(nm.to_dense(), w)
    assert nm.nbytes < w.numel() * w.element_size() < prepared.nbytes  # 2.5 vs 4 vs ~4 bytes per weight
    x = torch.randn(1, 16, 6, 6, generator=g)
    torch.testing.assert_close(convopt.conv(x, w, padding=1, algorithm="sparse"), F.conv2d(x, w, padding=1),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    very_sparse = pruned((8, 16, 3, 3), 0.99, g)
    assert is_n_m_sparse(very_sparse) and prepare(very_sparse, ConvSpec.from_weight(very_sparse)).n_m is None


def test_sparsity_and_break_even_helpers():
    assert sparsity(torch.tensor([0.0, 1.0, 0.0, 2.0])) == 0.5
    assert sparsity(torch.empty(0)) == 0.0
    assert math.isclose(break_even_sparsity(100.0, 10.0), 0.9)
    assert break_even_sparsity(10.0, 20.0) == 0.0
    with pytest.raises(ValueError, match="positive"):
        break_even_sparsity(0.0, 1.0)


def test_refusals_name_the_reason():
    supports = get_algorithm("sparse").supports
    assert "transposed" in supports(ConvSpec.create(4, 4, (3, 3), transposed=True), torch.float32)
    for dtype in (torch.int32, torch.float16, torch.bfloat16):
        assert "dtype" in supports(ConvSpec.create(4, 4, (3, 3)), dtype)
    assert "padding_mode" in supports(ConvSpec.create(4, 4, (3, 3), padding=1, padding_mode="reflect"), torch.float32)
    with pytest.raises(convopt.UnsupportedConvError, match="sparse cannot compute.*dtype"):
        convopt.conv(torch.ones(1, 2, 5, 5, dtype=torch.int32), torch.ones(2, 2, 3, 3, dtype=torch.int32),
                     algorithm="sparse")  # fmt: skip
