"""Every algorithm's error on the ResNet-18 3x3 layer shapes stays inside REFERENCES.md section 3's envelope.

Normwise error = max|y - y64| / max(|x| conv |w|) against the float64 reference, fp32 inputs.
"""

from __future__ import annotations

import functools

import pytest
import torch

from convopt.kernels import list_algorithms
from convopt.kernels.reference import reference_conv
from convopt.kernels.registry import get_algorithm
from convopt.spec import ConvSpec
from convopt.testing import elementwise_ok, normwise_error, normwise_limit

SHAPES = {"64@56": (64, 56), "128@28": (128, 28), "256@14": (256, 14), "512@7": (512, 7)}
ALGORITHMS = [name for name in list_algorithms() if name != "reference"]


@functools.lru_cache(maxsize=None)
def layer(shape: str):
    channels, size = SHAPES[shape]
    generator = torch.Generator().manual_seed(channels)
    x = torch.randn(1, channels, size, size, generator=generator)
    w = torch.randn(channels, channels, 3, 3, generator=generator) / (3 * channels**0.5)
    spec = ConvSpec.create(channels, channels, (3, 3), padding=1, bias=False)
    return x, w, spec, reference_conv(x, w, None, spec)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_error_envelope_on_resnet18_shapes(name, shape):
    x, w, spec, y64 = layer(shape)
    algorithm = get_algorithm(name)
    assert algorithm.supports(spec, torch.float32) is None, f"{name} should support ResNet-18's 3x3 layers"
    with torch.no_grad():
        y = algorithm(x, w, None, spec)
    error = normwise_error(y, y64, x, w, spec)
    if algorithm.error_kind == "elementwise":
        assert elementwise_ok(y, y64, spec)[0]
        assert error < 1e-6  # summation-order differences only
    else:
        assert error <= normwise_limit(name, torch.float32), f"{name} on {shape}: normwise error {error:.2e}"
