"""The `fft` algorithm: accuracy against the float64 reference (normwise), its error envelope, refusals,
FFT sizes, the prepared-spectrum cache and gradients. The shared contract tests cover the OpInfo samples."""

from __future__ import annotations

import pytest
import torch

import convopt
from convopt.kernels import fft, fft_planes
from convopt.kernels.dispatch import check_call
from convopt.kernels.reference import reference_conv
from convopt.kernels.registry import get_algorithm
from convopt.spec import ConvSpec
from convopt.testing import normwise_error, normwise_limit

# Measured envelope (random normal data, the cases below): fp32 ~2e-8..1e-7, fp64 ~7e-17..5e-16; asserted with margin.
ENVELOPE = {torch.float32: 1e-6, torch.float64: 1e-14}

CASES = {  # name: (input shape, weight shape, conv kwargs)
    "1d": ((2, 3, 40), (5, 3, 7), dict(padding=3)),
    "1d_long_kernel_dilated": ((1, 2, 90), (3, 2, 15), dict(padding="same", dilation=3)),
    "2d": ((2, 4, 17, 13), (6, 4, 3, 5), dict(padding=(1, 2))),
    "2d_31x31_same": ((1, 4, 48, 40), (4, 4, 31, 31), dict(padding="same")),
    "2d_even_kernel_same": ((2, 3, 16, 15), (4, 3, 4, 6), dict(padding="same")),
    "2d_dilation_asymmetric": ((1, 2, 20, 21), (3, 2, 3, 4), dict(dilation=(2, 3), padding="same")),
    "2d_groups": ((2, 6, 12, 12), (9, 2, 5, 5), dict(padding=2, groups=3)),
    "2d_depthwise": ((2, 8, 19, 19), (8, 1, 7, 7), dict(padding=3, groups=8)),
    "2d_depthwise_multiplier": ((1, 4, 14, 14), (8, 1, 5, 5), dict(padding="valid", groups=4)),
    "2d_padding_exceeds_kernel": ((1, 2, 5, 6), (3, 2, 2, 1), dict(padding=4)),
    "2d_kernel_larger_than_input": ((1, 2, 3, 3), (2, 2, 9, 9), dict(padding=4)),
    "3d": ((1, 3, 10, 9, 8), (4, 3, 3, 3, 3), dict(padding=1)),
    "3d_7x7x7_same": ((1, 2, 14, 14, 14), (2, 2, 7, 7, 7), dict(padding="same")),
    "3d_even_groups_dilated": ((1, 4, 9, 10, 11), (4, 2, 2, 3, 2), dict(padding="same", groups=2, dilation=2)),
    # plane path: batch rows interleaved with depth, depth padding beyond the kernel's reach, depth dilation
    "3d_batch_groups_deep_padding": ((3, 4, 5, 6, 7), (6, 2, 3, 2, 3), dict(padding=(5, 1, 2), groups=2,
                                                                           dilation=(2, 1, 1))),
    "3d_deeper_than_plane_path": ((1, 2, 12, 6, 5), (3, 2, 10, 3, 2), dict(padding="same")),  # full 3-D FFT
}


def measure(name: str, dtype: torch.dtype) -> float:
    x_shape, w_shape, kwargs = CASES[name]
    generator = torch.Generator().manual_seed(len(name))
    x = torch.randn(x_shape, generator=generator, dtype=dtype)
    w = torch.randn(w_shape, generator=generator, dtype=dtype)
    b = torch.randn(w_shape[0], generator=generator, dtype=dtype)
    y = convopt.conv(x, w, b, **kwargs, algorithm="fft")
    spec = check_call(x, w, b, 1, kwargs.get("padding", 0), kwargs.get("dilation", 1), kwargs.get("groups", 1))
    y_ref = reference_conv(x, w, b, spec)
    assert y.shape == y_ref.shape and y.dtype == dtype
    return normwise_error(y, y_ref, x, w, spec)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", CASES)
def test_matches_float64_reference_normwise(name, dtype):
    error = measure(name, dtype)
    assert error <= normwise_limit("fft", dtype), f"{name}: normwise error {error:.3g}"
    assert error <= ENVELOPE[dtype], f"{name}: normwise error {error:.3g} outside the documented envelope"


def test_real_gemm_weight_computes_the_complex_product():
    generator = torch.Generator().manual_seed(0)
    spectra = torch.randn(5, 3, 2, 6, 4, dtype=torch.complex128, generator=generator)  # (F, taps, G, Cg, Kg)
    x = torch.randn(3, 5, 2, 7, 6, dtype=torch.complex128, generator=generator)  # (taps, F, G, rows, Cg)
    real = fft_planes.real_gemm_weight(spectra)
    assert real.shape == (3, 10, 12, 8) and real.dtype == torch.float64
    y = torch.view_as_real(x).flatten(-2).view(3, 10, 7, 12) @ real  # (taps, F * G, rows, 2 * Kg) real
    expected = x @ spectra.transpose(0, 1)  # y[.., k] = sum_c x[.., c] w[c, k]
    torch.testing.assert_close(torch.view_as_complex(y.unflatten(-1, (4, 2))), expected.view(3, 10, 7, 4),
                               rtol=1e-12, atol=1e-12)  # fmt: skip


def test_error_kind_and_limit_are_normwise_1e5():
    assert get_algorithm("fft").error_kind == "normwise"
    assert normwise_limit("fft", torch.float32) == 1e-5


@pytest.mark.parametrize(
    "kwargs, reason",
    [(dict(stride=2), r"stride \(2, 2\) != 1"), (dict(stride=(1, 2)), r"stride \(1, 2\) != 1")],
)
def test_strided_calls_are_refused_with_reason_and_alternatives(kwargs, reason):
    x, w = torch.randn(1, 2, 12, 12), torch.randn(3, 2, 3, 3)
    with pytest.raises(convopt.UnsupportedConvError, match=rf"fft cannot compute.*{reason}.*use one of: .*direct"):
        convopt.conv(x, w, **kwargs, algorithm="fft")


def test_other_refusals_name_their_reason():
    supports = get_algorithm("fft").supports
    spec = ConvSpec.create(2, 2, (3, 3))
    assert supports(spec, torch.float32) is None and supports(spec, torch.float64) is None
    assert "transposed" in supports(ConvSpec.create(2, 2, (3, 3), transposed=True), torch.float32)
    assert "float16" in supports(spec, torch.float16)
    assert "bfloat16" in supports(spec, torch.bfloat16)
    assert "padding_mode" in supports(ConvSpec.create(2, 2, (3, 3), padding=1, padding_mode="reflect"), torch.float32)


def test_fft_sizes_are_7_smooth_minimal_and_even_when_asked():
    assert [fft.fft_size(n) for n in (1, 7, 11, 13, 17, 67, 79, 97, 121)] == [1, 7, 12, 14, 18, 70, 80, 98, 125]
    assert [fft.fft_size(n, even=True) for n in (1, 7, 15, 25, 49, 67, 79)] == [2, 8, 16, 28, 50, 70, 80]
    for n in range(1, 400):
        for even in (False, True):
            m = fft.fft_size(n, even=even)
            assert m >= n and fft.is_smooth(m) and (m % 2 == 0 or not even)
            assert not any(fft.is_smooth(k) and (k % 2 == 0 or not even) for k in range(n, m))


def test_fft_shape_avoids_wraparound_but_not_more():
    spec = ConvSpec.create(64, 64, (31, 31), padding="same")
    assert fft.fft_shape(spec, (64, 64)) == (80, 80)  # 64 + 15 = 79 -> 80, not the linear size 64 + 30 = 94
    spec3 = ConvSpec.create(16, 16, (7, 7, 7), padding="same")
    assert fft.fft_shape(spec3, (64, 64, 64)) == (70, 70, 70)
    assert fft.fft_shape(ConvSpec.create(1, 1, (1,), padding=4), (5,)) == (14,)  # output 13 > 5 + 4


def test_prepared_spectrum_is_cached_per_fft_size():
    w = torch.randn(4, 3, 5, 5)
    spec = ConvSpec.create(3, 4, (5, 5), padding=2)
    prepared = get_algorithm("fft").prepare(w, spec)
    x1, x2 = torch.randn(2, 3, 16, 16), torch.randn(1, 3, 20, 18)
    algorithm = get_algorithm("fft")
    y1 = algorithm.run(x1, prepared, None, spec)
    first = prepared.spectrum(fft.fft_shape(spec, (16, 16)))
    assert algorithm.run(x1, prepared, None, spec).equal(y1)
    assert prepared.spectrum(fft.fft_shape(spec, (16, 16))) is first  # reused, not recomputed
    torch.testing.assert_close(algorithm.run(x2, prepared, None, spec), torch.nn.functional.conv2d(x2, w, padding=2),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    assert prepared.spectrum(fft.fft_shape(spec, (16, 16))) is first  # two sizes fit the cache


def test_gradients_flow_and_are_not_cached():
    spec_args = dict(padding="same", groups=2)
    x = torch.randn(1, 4, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: convopt.conv(a, b, **spec_args, algorithm="fft"), (x, w),
                                    fast_mode=True)  # fmt: skip
    spec = check_call(x, w, None, 1, "same", 1, 2)
    prepared = get_algorithm("fft").prepare(w, spec)
    y = get_algorithm("fft").run(x, prepared, None, spec)
    y.square().sum().backward()
    expected = torch.autograd.grad(torch.nn.functional.conv3d(x, w, padding="same", groups=2).square().sum(), w)[0]
    torch.testing.assert_close(w.grad, expected)
    assert not prepared._spectra  # a cached spectrum would hold a stale graph


def test_batch_zero_unbatched_and_channels_last():
    w = torch.randn(6, 2, 3, 3)
    assert convopt.conv(torch.randn(0, 4, 10, 10), w, padding=1, groups=2, algorithm="fft").shape == (0, 6, 10, 10)
    x = torch.randn(4, 10, 10)
    torch.testing.assert_close(convopt.conv(x, w, groups=2, algorithm="fft"),
                               torch.nn.functional.conv2d(x, w, groups=2), rtol=1e-4, atol=1e-4)  # fmt: skip
    xc = torch.randn(2, 4, 10, 10).to(memory_format=torch.channels_last)
    torch.testing.assert_close(convopt.conv(xc, w, groups=2, algorithm="fft"),
                               torch.nn.functional.conv2d(xc, w, groups=2), rtol=1e-4, atol=1e-4)  # fmt: skip
