"""The embedded default model's contract: eval mode, (N, 1, 28, 28) in [0, 1] -> (N, 10) logits."""

from __future__ import annotations

import pytest
import torch

from convopt.models import MnistResNet, default_model


def test_default_model_contract():
    model = default_model()
    assert isinstance(model, MnistResNet) and not model.training
    logits = model(torch.rand(5, 1, 28, 28))
    assert logits.shape == (5, 10) and torch.isfinite(logits).all()


def test_default_model_has_the_layers_convopt_must_handle():
    kinds = {type(m).__name__ for m in default_model().modules()}
    assert {"Conv2d", "BatchNorm2d", "ReLU", "AdaptiveAvgPool2d", "Linear"} <= kinds
    assert default_model().layer2.downsample is not None  # strided 1x1 projection on a residual path


def test_default_model_rejects_wrong_channels():
    with pytest.raises(RuntimeError):
        default_model()(torch.rand(1, 3, 28, 28))
