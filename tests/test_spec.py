"""ConvSpec: output shapes and closed-form MACs/params/bytes against PyTorch itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convopt import ConvSpec, InputShapeError, InvalidSpecError

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def counted_macs(module: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // 2


# (dims, module kwargs, input shape, hand-computed MACs)
CLOSED_FORM = [
    # conv1d: N=2, C 4->8, L 10, k 3, no pad -> L_out 8: 2*8*8*4*3
    (1, dict(in_channels=4, out_channels=8, kernel_size=3), (2, 4, 10), 2 * 8 * 8 * 4 * 3),
    # conv2d 3x3 pad 1 on 8x8, C 3->16: 1*16*64*3*9
    (2, dict(in_channels=3, out_channels=16, kernel_size=3, padding=1), (1, 3, 8, 8), 16 * 64 * 3 * 9),
    # strided: 7x7 stride 2 pad 3 on 32x32 -> 16x16
    (2, dict(in_channels=3, out_channels=8, kernel_size=7, stride=2, padding=3), (1, 3, 32, 32), 8 * 256 * 3 * 49),
    # dilated: k3 d2 on 9x9 no pad -> 5x5
    (2, dict(in_channels=2, out_channels=4, kernel_size=3, dilation=2), (1, 2, 9, 9), 4 * 25 * 2 * 9),
    # grouped: groups 4, C 8->16: each output sees 2 input channels
    (2, dict(in_channels=8, out_channels=16, kernel_size=3, padding=1, groups=4), (1, 8, 6, 6), 16 * 36 * 2 * 9),
    # depthwise: groups = C = 16: one input channel per output
    (2, dict(in_channels=16, out_channels=16, kernel_size=3, padding=1, groups=16), (3, 16, 5, 5), 3 * 16 * 25 * 9),
    # conv3d: 3x3x3 pad 1 on 4x5x6, C 2->3
    (3, dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (1, 2, 4, 5, 6), 3 * 120 * 2 * 27),
    # 'same' with an even kernel (asymmetric padding)
    (2, dict(in_channels=2, out_channels=2, kernel_size=4, padding="same"), (1, 2, 7, 7), 2 * 49 * 2 * 16),
    # 'valid'
    (1, dict(in_channels=1, out_channels=1, kernel_size=5, padding="valid"), (1, 1, 12), 8 * 5),
]


@pytest.mark.parametrize("dims,kwargs,shape,expected", CLOSED_FORM)
def test_closed_form_macs_match_hand_count_and_flop_counter(dims, kwargs, shape, expected):
    module = CONV[dims](**kwargs)
    spec = ConvSpec.from_module(module)
    x = torch.randn(shape)
    assert spec.macs(shape) == expected
    assert spec.macs(shape) == counted_macs(module, x)
    assert spec.output_shape(shape) == tuple(module(x).shape)
    assert spec.params == sum(p.numel() for p in module.parameters())


TRANSPOSED = [
    # C_in 4 -> C_out 6, k 3, stride 2 on L 5: every input element scatters into 6*3 outputs
    (1, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2), (2, 4, 5), 2 * 4 * 5 * 6 * 3),
    (2, dict(in_channels=8, out_channels=4, kernel_size=4, stride=2, padding=1), (1, 8, 7, 7), 8 * 49 * 4 * 16),
    (2, dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1, output_padding=1, groups=4),
     (1, 8, 5, 5), 8 * 25 * 2 * 9),
    (3, dict(in_channels=2, out_channels=3, kernel_size=2, stride=2, dilation=1), (1, 2, 3, 3, 3), 2 * 27 * 3 * 8),
    (2, dict(in_channels=3, out_channels=3, kernel_size=3, dilation=2, output_padding=1, stride=2),
     (1, 3, 4, 4), 3 * 16 * 3 * 9),
]


@pytest.mark.parametrize("dims,kwargs,shape,expected", TRANSPOSED)
def test_transposed_macs_and_shapes(dims, kwargs, shape, expected):
    module = CONV_T[dims](**kwargs)
    spec = ConvSpec.from_module(module)
    x = torch.randn(shape)
    assert spec.transposed
    assert spec.macs(shape) == expected == counted_macs(module, x)
    assert spec.output_shape(shape) == tuple(module(x).shape)
    assert spec.params == sum(p.numel() for p in module.parameters())
    assert spec.weight_shape == tuple(module.weight.shape)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_padding_modes_keep_shape_and_macs(mode):
    module = nn.Conv2d(3, 5, kernel_size=(3, 5), padding=(1, 2), padding_mode=mode)
    spec = ConvSpec.from_module(module)
    x = torch.randn(2, 3, 9, 11)
    assert spec.padding_mode == mode
    assert spec.output_shape(x.shape) == tuple(module(x).shape)
    assert spec.macs(x.shape) == counted_macs(module, x)


def test_per_side_padding_matches_explicit_pad_then_conv():
    spec = ConvSpec.create(2, 3, (3, 3), padding=((0, 2), (1, 3)))
    x, w = torch.randn(1, 2, 6, 7), torch.randn(spec.weight_shape)
    y = F.conv2d(F.pad(x, (1, 3, 0, 2)), w)  # F.pad lists the last dim first
    assert spec.output_shape(x.shape) == tuple(y.shape)


def test_same_padding_puts_the_odd_pad_after_like_pytorch():
    spec = ConvSpec.create(1, 1, (4,), padding="same", dilation=3)  # total pad 9 -> (4, 5)
    assert spec.padding == ((4, 5),)
    x = torch.randn(1, 1, 20)
    assert spec.output_shape(x.shape) == tuple(F.conv1d(x, torch.randn(1, 1, 4), padding="same", dilation=3).shape)


def test_unbatched_input_shape():
    module = nn.Conv2d(3, 4, 3)
    x = torch.randn(3, 10, 10)
    spec = ConvSpec.from_module(module)
    assert spec.output_shape(x.shape) == tuple(module(x).shape)
    assert spec.macs(x.shape) == spec.macs((1, *x.shape))


def test_bytes_moved_counts_input_weight_bias_and_output():
    spec = ConvSpec.create(4, 8, (3, 3), padding=1)
    read, written = spec.bytes_moved((2, 4, 5, 5), itemsize=4)
    assert read == 4 * (2 * 4 * 25 + 8 * 4 * 9 + 8)
    assert written == 4 * (2 * 8 * 25)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=3, out_channels=4, kernel_size=(3, 3), groups=2), "groups=2 must divide"),
        (dict(in_channels=3, out_channels=4, kernel_size=(3, 3), stride=2, padding="same"), "stride 1"),
        (dict(in_channels=3, out_channels=4, kernel_size=(0, 3)), ">= 1"),
        (dict(in_channels=3, out_channels=4, kernel_size=(3, 3), padding=-1), "non-negative"),
        (dict(in_channels=3, out_channels=4, kernel_size=(3, 3), padding_mode="mirror"), "padding_mode"),
        (dict(in_channels=3, out_channels=4, kernel_size=(3, 3), transposed=True, padding_mode="reflect"), "zeros"),
        (dict(in_channels=3, out_channels=4, kernel_size=(3, 3), transposed=True, output_padding=2), "output_padding"),
        (dict(in_channels=3, out_channels=4, kernel_size=(3, 3), output_padding=1), "transposed"),
        (dict(in_channels=3, out_channels=4, kernel_size=(3, 3, 3, 3)), "1-d, 2-d and 3-d"),
        (dict(in_channels=3, out_channels=4, kernel_size=(3, 3), padding="full"), "'same' or 'valid'"),
        (dict(in_channels=3, out_channels=4, kernel_size=(3, 3), stride=(1, 2, 3)), "expected an int or 2 ints"),
    ],
)
def test_invalid_specs_raise_with_the_reason(kwargs, match):
    with pytest.raises(InvalidSpecError, match=match):
        ConvSpec.create(**kwargs)


def test_input_shape_errors_are_typed():
    spec = ConvSpec.create(3, 4, (3, 3))
    with pytest.raises(InputShapeError, match="channels"):
        spec.output_shape((1, 5, 8, 8))
    with pytest.raises(InputShapeError, match="too small"):
        spec.output_shape((1, 3, 2, 2))
    with pytest.raises(InputShapeError, match="spatial sizes"):
        spec.output_shape((3, 8))
    reflect = ConvSpec.create(3, 4, (3, 3), padding=3, padding_mode="reflect")
    with pytest.raises(InputShapeError, match="reflect"):
        reflect.output_shape((1, 3, 3, 3))


@st.composite
def conv_cases(draw):
    dims = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(dims))
    spatial = tuple(draw(st.integers(6, 9)) for _ in range(dims))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation)) if transposed else 0
    return dims, transposed, dict(in_channels=cin, out_channels=cout, kernel_size=kernel, stride=stride,
                                  dilation=dilation, padding=padding, groups=groups,
                                  bias=draw(st.booleans())), output_padding, (draw(st.integers(1, 2)), cin, *spatial)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_random_specs_agree_with_pytorch(case):
    dims, transposed, kwargs, output_padding, shape = case
    module = CONV_T[dims](**kwargs, output_padding=output_padding) if transposed else CONV[dims](**kwargs)
    spec = ConvSpec.from_module(module)
    x = torch.randn(shape)
    try:
        y = module(x)
    except RuntimeError:  # PyTorch rejects this input (output too small): so must we
        with pytest.raises(InputShapeError):
            spec.output_shape(shape)
        return
    assert spec.output_shape(shape) == tuple(y.shape)
    assert spec.macs(shape) == counted_macs(module, x)
    assert spec.params == sum(p.numel() for p in module.parameters())
    assert math.prod(spec.weight_shape) == module.weight.numel()
