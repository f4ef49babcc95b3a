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


def test_default_model_ships_trained_weights_with_good_held_out_accuracy():
    from convopt.data import load_mnist
    from convopt.models import default_weights_available

    assert default_weights_available()
    x, y = load_mnist("test")  # 1000 held-out digits, never used in training
    with torch.no_grad():
        accuracy = float((default_model()(x).argmax(1) == y).float().mean())
    assert accuracy >= 0.97
