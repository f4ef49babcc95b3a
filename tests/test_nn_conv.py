"""AlgoConv1d/2d/3d: same outputs and state dict as the wrapped conv; weight transform cached and invalidated."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import convopt
from convopt.kernels import list_algorithms
from convopt.nn import AlgoConv1d, AlgoConv2d, AlgoConv3d, from_conv

ALGORITHMS = [name for name in list_algorithms() if name != "reference"]
CASES = {
    1: lambda: nn.Conv1d(6, 8, 5, padding=2, groups=2),
    2: lambda: nn.Conv2d(6, 8, 3, padding=1),
    3: lambda: nn.Conv3d(4, 4, 3, padding=1),
}
INPUTS = {1: (2, 6, 20), 2: (2, 6, 10, 9), 3: (1, 4, 6, 5, 7)}


def supported(name, conv):
    try:
        return from_conv(conv, name)
    except convopt.UnsupportedConvError:
        return None


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_wrapper_matches_the_wrapped_module(name, dims):
    conv = CASES[dims]().double().eval()
    wrapped = supported(name, conv)
    if wrapped is None:
        pytest.skip(f"{name} does not support this {dims}-d case (refusal is tested in the contract tests)")
    x = torch.randn(INPUTS[dims], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), conv(x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(wrapped(x[0]), conv(x[0]), rtol=1e-9, atol=1e-9)  # unbatched


def test_state_dict_keys_and_parameters_are_shared():
    conv = nn.Conv2d(3, 4, 3, bias=True)
    wrapped = AlgoConv2d.from_conv(conv, "im2col")
    assert list(wrapped.state_dict()) == list(conv.state_dict()) == ["weight", "bias"]
    assert wrapped.weight is conv.weight and wrapped.bias is conv.bias
    other = nn.Conv2d(3, 4, 3)
    wrapped.load_state_dict(other.state_dict())
    torch.testing.assert_close(wrapped.weight, other.weight)


class CountingPrepare:
    def __init__(self, prepare):
        self.prepare, self.calls = prepare, 0

    def __call__(self, weight, spec):
        self.calls += 1
        return self.prepare(weight, spec)


def counting(wrapped):
    counter = CountingPrepare(wrapped.algorithm.prepare)
    wrapped.algorithm = dataclasses.replace(wrapped.algorithm, prepare=counter)
    return counter


def test_prepared_weight_is_cached_and_invalidated_when_weights_change():
    conv = nn.Conv2d(4, 4, 3, padding=1).eval()
    wrapped = AlgoConv2d.from_conv(conv, "im2col")
    counter = counting(wrapped)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        first = wrapped(x)
        wrapped(x)
        assert counter.calls == 1  # cached
        conv.weight.mul_(2.0)  # in-place update bumps the version counter
        torch.testing.assert_close(wrapped(x) - conv.bias.view(1, -1, 1, 1),
                                   2 * (first - conv.bias.view(1, -1, 1, 1)))  # fmt: skip
        assert counter.calls == 2
        wrapped.load_state_dict(nn.Conv2d(4, 4, 3, padding=1).state_dict())
        torch.testing.assert_close(wrapped(x), nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
        assert counter.calls == 3
        wrapped.weight = nn.Parameter(torch.zeros_like(conv.weight))  # a new tensor altogether
        assert torch.allclose(wrapped(x), wrapped.bias.view(1, -1, 1, 1).expand(1, 4, 8, 8))
        assert counter.calls == 4


def test_training_recomputes_and_gradients_match_the_original():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    twin = nn.Conv2d(3, 5, 3, padding=1)
    twin.load_state_dict(conv.state_dict())
    wrapped = AlgoConv2d.from_conv(twin, "im2col")
    counter = counting(wrapped)
    x = torch.randn(2, 3, 7, 7)
    conv(x).square().sum().backward()
    wrapped(x).square().sum().backward()
    wrapped(x)
    assert counter.calls == 2  # no caching while the weight needs gradients
    torch.testing.assert_close(twin.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(twin.bias.grad, conv.bias.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes(mode):
    conv = nn.Conv2d(3, 4, 3, padding=(1, 2), padding_mode=mode).eval()
    x = torch.randn(1, 3, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(AlgoConv2d.from_conv(conv, "im2col")(x), conv(x), rtol=1e-4, atol=1e-5)


def test_bad_wrapping_raises_typed_errors():
    with pytest.raises(convopt.InvalidSpecError, match="wraps Conv1d"):
        AlgoConv1d.from_conv(nn.Conv2d(2, 2, 3))
    with pytest.raises(convopt.InvalidSpecError, match="ConvTranspose2d"):
        from_conv(nn.ConvTranspose2d(2, 2, 3))
    with pytest.raises(convopt.UnsupportedConvError, match="cannot compute"):
        AlgoConv3d.from_conv(nn.Conv3d(2, 2, 3).bfloat16(), "im2col")
    with pytest.raises(convopt.InputShapeError, match="channels"):
        AlgoConv2d.from_conv(nn.Conv2d(2, 2, 3))(torch.randn(1, 3, 8, 8))
