"""Reference architectures and the embedded default model."""

from __future__ import annotations

from importlib import resources

from torch import nn

from convopt.models.mnist_resnet import MnistResNet

DEFAULT_WEIGHTS = "mnist_resnet.safetensors"


def default_weights_available() -> bool:
    return resources.files(__package__).joinpath(DEFAULT_WEIGHTS).is_file()


def default_model() -> nn.Module:
    """The embedded default MNIST CNN in eval mode; with its trained weights once they ship in the package.

    Takes (N, 1, 28, 28) float tensors with pixel values in [0, 1] and returns (N, 10) logits.
    """
    model = MnistResNet()
    if default_weights_available():
        from safetensors.torch import load_file

        with resources.as_file(resources.files(__package__).joinpath(DEFAULT_WEIGHTS)) as path:
            model.load_state_dict(load_file(str(path)))
    return model.eval()


__all__ = ["MnistResNet", "default_model", "default_weights_available"]
