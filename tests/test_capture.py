"""convopt.capture.capture_layers: first-call inputs/outputs, safe from in-place ops, hooks always removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convopt.capture import capture_layers
from convopt.search.autotune import capture_conv_inputs


class Twice(nn.Module):
    """Calls the same conv twice, then changes its first output in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv(x)
        second = self.conv(first)
        first.mul_(0)  # in place, after the hook saw it
        return second


def test_first_call_is_kept_and_later_in_place_ops_do_not_alter_it():
    torch.manual_seed(0)
    model, x = Twice().eval(), torch.randn(1, 2, 3, 3)
    seen = capture_layers(model, ["conv"], (x,))
    expected = model.conv(x)
    torch.testing.assert_close(seen["conv"][0], x)
    torch.testing.assert_close(seen["conv"][1], expected)  # the clone survived first.mul_(0)
    assert not model.conv._forward_hooks  # removed


def test_unknown_names_raise_and_uncalled_modules_are_absent():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1))
    with pytest.raises(AttributeError):
        capture_layers(model, ["2"], (torch.randn(1, 1, 2, 2),))
    model.forward = lambda x: model[0](x)  # the second conv is never called
    assert set(capture_layers(model, ["0", "1"], (torch.randn(1, 1, 2, 2),))) == {"0"}


def test_hooks_are_removed_when_the_forward_fails():
    model = nn.Sequential(nn.Conv2d(3, 1, 1))
    with pytest.raises(RuntimeError):
        capture_layers(model, ["0"], (torch.randn(1, 2, 4, 4),))  # wrong channel count
    assert not model[0]._forward_hooks


def test_autotune_captures_every_conv_input():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Conv2d(2, 1, 1)), torch.randn(1, 1, 5, 5)
    inputs = capture_conv_inputs(model, (x,))
    assert list(inputs) == ["0", "2"]
    torch.testing.assert_close(inputs["2"], torch.relu(model[0](x)))
