"""The int8 convolution engine matches its integer oracle within 1 LSB, and the float conv closely."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convopt.kernels.int8 import int8_conv, int8_conv_reference, quantize_conv_weight
from convopt.kernels.quantize import QuantScheme, choose_qparams, dequantize, quantize
from convopt.spec import ConvSpec
from convopt.testing import sqnr_db

ACT = QuantScheme(symmetric=False)  # signed int8, affine: activations


@pytest.mark.parametrize("case", [
    dict(c_in=16, c_out=32, k=3, padding=1, stride=1, groups=1, size=12),
    dict(c_in=8, c_out=8, k=3, padding=1, stride=2, groups=8, size=9),  # depthwise, strided
    dict(c_in=12, c_out=6, k=1, padding=0, stride=1, groups=3, size=7),
    dict(c_in=4, c_out=16, k=5, padding=(2, 1), stride=1, groups=1, size=10),
])  # fmt: skip
def test_engine_matches_integer_oracle_and_float_conv(case):
    generator = torch.Generator().manual_seed(0)
    spec = ConvSpec.create(case["c_in"], case["c_out"], (case["k"], case["k"]), stride=case["stride"],
                           padding=case["padding"], groups=case["groups"])  # fmt: skip
    x = torch.rand(2, case["c_in"], case["size"], case["size"], generator=generator) * 3 - 0.5  # not centred
    w = torch.randn(spec.weight_shape, generator=generator)
    b = torch.randn(case["c_out"], generator=generator)
    x_scale, x_zero = choose_qparams(x.min(), x.max(), ACT)
    x_q = quantize(x, x_scale, x_zero, ACT)
    weight = quantize_conv_weight(w, spec)
    y = F.conv2d(F.pad(x, [spec.padding[1][0], spec.padding[1][1], spec.padding[0][0], spec.padding[0][1]]), w, b,
                 spec.stride, 0, 1, spec.groups)  # fmt: skip
    out_scale, out_zero = choose_qparams(y.min(), y.max(), ACT)
    args = (x_q, float(x_scale), int(x_zero), weight, b, spec, float(out_scale), int(out_zero), ACT)
    engine, oracle = int8_conv(*args), int8_conv_reference(*args)
    assert engine.dtype == torch.int8 and engine.shape == y.shape
    assert int((engine.int() - oracle.int()).abs().max()) <= 1
    assert sqnr_db(y, dequantize(engine, out_scale, out_zero, ACT)) > 30  # int8 end to end


def test_zero_point_padding_means_real_zero():
    spec = ConvSpec.create(1, 1, (3, 3), padding=1, bias=False)
    x = torch.full((1, 1, 4, 4), 2.0)
    x_scale, x_zero = choose_qparams(torch.tensor(1.0), torch.tensor(3.0), ACT)  # zero point far from 0
    weight = quantize_conv_weight(torch.ones(1, 1, 3, 3), spec)
    out = int8_conv(quantize(x, x_scale, x_zero, ACT), float(x_scale), int(x_zero), weight, None, spec, 0.1, 0, ACT)
    real = dequantize(out, torch.tensor(0.1), torch.tensor(0), ACT)
    assert float(real[0, 0, 0, 0]) == pytest.approx(8.0, abs=0.1)  # corner: 4 taps of 2.0, padding adds 0
    assert float(real[0, 0, 1, 1]) == pytest.approx(12.7, abs=0.1)  # saturates at 127 * 0.1 (true value 18)
