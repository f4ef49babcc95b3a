"""convopt.data.photos: the bundled real photos load offline, and crops of them are deterministic."""

from __future__ import annotations

import pytest
import torch

from convopt.data import photos
from convopt.data.photos import (
    CALIBRATION_PHOTOS, EVALUATION_PHOTOS, PHOTOS, imagenet_normalize, photo_crops, random_crops, sample_photos,
)  # fmt: skip
from convopt.errors import ConfigError, ConvoptError


def test_every_photo_loads_as_three_channels_in_the_unit_range():
    loaded = sample_photos()
    assert list(loaded) == list(PHOTOS) and len(loaded) >= 20
    for name, image in loaded.items():
        assert image.dtype == torch.float32 and image.dim() == 3 and image.shape[0] == 3, name
        assert min(image.shape[1:]) >= 100 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0, name
        assert float(image.std()) > 0.01, name  # a real picture, not a blank
    camera, logo, horse = loaded["camera"], loaded["logo"], loaded["horse"]
    assert torch.equal(camera[0], camera[1]) and torch.equal(camera[1], camera[2])  # grayscale replicated
    assert logo.shape[0] == 3  # RGBA: alpha dropped
    assert set(horse.unique().tolist()) == {0.0, 1.0}  # a boolean mask becomes 0 / 1
    assert not torch.equal(loaded["coffee"][0], loaded["coffee"][2])  # colour photos keep their channels


def test_default_groups_are_disjoint_and_known():
    assert not set(CALIBRATION_PHOTOS) & set(EVALUATION_PHOTOS)
    assert set(CALIBRATION_PHOTOS) | set(EVALUATION_PHOTOS) <= set(PHOTOS)
    assert len(CALIBRATION_PHOTOS) >= 8 and len(EVALUATION_PHOTOS) >= 8


def test_crops_cycle_through_the_photos_and_are_deterministic():
    flat = [torch.full((3, 60, 90), value) for value in (0.1, 0.5, 0.9)]
    crops = random_crops(flat, 7, size=16, seed=4)
    assert crops.shape == (7, 3, 16, 16)
    expected = torch.tensor([0.1, 0.5, 0.9])[torch.arange(7) % 3]
    torch.testing.assert_close(crops.mean(dim=(1, 2, 3)), expected)  # crop i comes from photo i % 3
    real = list(sample_photos(["chelsea", "coffee"]).values())
    first = random_crops(real, 6, size=32, seed=1)
    assert torch.equal(first, random_crops(real, 6, size=32, seed=1))
    assert not torch.equal(first, random_crops(real, 6, size=32, seed=2))
    assert len({tuple(c.flatten()[:50].tolist()) for c in first}) == 6  # six different crops


def test_normalisation_and_photo_crops():
    mean = torch.tensor(photos.IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert float(imagenet_normalize(mean).abs().max()) < 1e-6
    x = photo_crops(["astronaut"], 2, size=24)
    raw = photo_crops(["astronaut"], 2, size=24, normalize=False)
    torch.testing.assert_close(x, imagenet_normalize(raw))


def test_bad_requests_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"photo 'lena' is unknown; available: astronaut"):
        sample_photos(["lena"])
    with pytest.raises(ConfigError, match="at least one photo"):
        sample_photos([])
    with pytest.raises(ConfigError, match="count=0"):
        random_crops([torch.rand(3, 8, 8)], 0)
    with pytest.raises(ConfigError, match="scale"):
        random_crops([torch.rand(3, 8, 8)], 1, scale=(0.0, 1.0))

    def missing():
        raise ModuleNotFoundError("No module named 'skimage'")

    monkeypatch.setitem(PHOTOS, "astronaut", ("scikit-image", missing))
    photos._load.cache_clear()
    try:
        with pytest.raises(ConvoptError, match=r"ships with scikit-image.*pip install scikit-image"):
            sample_photos(["astronaut"])
    finally:
        photos._load.cache_clear()
