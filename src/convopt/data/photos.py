"""Real photos bundled with installed packages, and deterministic crops of them for calibration and evaluation.

The photos ship inside scikit-image (`skimage.data`, the ones stored in its wheel), scikit-learn
(`load_sample_images`) and matplotlib (`cbook.get_sample_data`), so they load offline. They are not a labelled
set: an ImageNet model's own fp32 predictions serve as labels when an INT8 model is compared with it.

Two disjoint default groups (`CALIBRATION_PHOTOS`, `EVALUATION_PHOTOS`) mix colour scenes, objects, a cat, a
portrait, textures and grayscale shots on each side, so ranges calibrated on one group are judged on photos they
never saw. Every photo comes back as a float tensor (3, H, W) in [0, 1] (grayscale replicated to three
channels, an alpha channel dropped); `random_crops` cuts (N, 3, S, S) crops with a seeded generator.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from convopt.errors import ConfigError, ConvoptError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _skimage(name: str) -> Callable[[], Any]:
    def load() -> Any:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)

    return load


def _sklearn(index: int) -> Callable[[], Any]:
    def load() -> Any:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


def _matplotlib(file: str) -> Callable[[], Any]:
    def load() -> Any:
        import matplotlib.cbook as cbook
        import numpy as np
        from PIL import Image

        with cbook.get_sample_data(file) as handle:
            return np.asarray(Image.open(handle).convert("RGB"))

    return load


# name -> (package that ships it, loader returning an (H, W[, C]) array)
PHOTOS: dict[str, tuple[str, Callable[[], Any]]] = {
    **{n: ("scikit-image", _skimage(n)) for n in (
        "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
        "colorwheel", "logo", "stereo_motorcycle", "camera", "coins", "horse", "moon", "page", "brick", "grass",
        "gravel", "clock", "text", "cell",
    )},
    "china": ("scikit-learn", _sklearn(0)),
    "flower": ("scikit-learn", _sklearn(1)),
    "grace_hopper": ("matplotlib", _matplotlib("grace_hopper.jpg")),
    "present_pack": ("matplotlib", _matplotlib("Minduka_Present_Blue_Pack.png")),
}  # fmt: skip
CALIBRATION_PHOTOS = ("astronaut", "china", "rocket", "immunohistochemistry", "colorwheel", "present_pack",
                      "camera", "moon", "brick", "gravel", "text", "horse")  # fmt: skip
EVALUATION_PHOTOS = ("coffee", "chelsea", "flower", "grace_hopper", "stereo_motorcycle", "hubble_deep_field",
                     "retina", "logo", "coins", "clock", "page", "grass", "cell")  # fmt: skip


@functools.lru_cache(maxsize=None)
def _load(name: str) -> torch.Tensor:
    if name not in PHOTOS:
        raise ConfigError(f"photo {name!r} is unknown; available: {', '.join(PHOTOS)}")
    package, loader = PHOTOS[name]
    try:
        array = loader()
    except ImportError as exc:
        raise ConvoptError(f"photo {name!r} ships with {package}, which cannot be imported ({exc}): "
                           f"pip install {package}, or ask for other photos") from exc  # fmt: skip
    image = torch.as_tensor(array.copy())
    if image.dtype == torch.bool:
        image = image.to(torch.uint8) * 255
    if image.dim() == 2:  # grayscale: three equal channels
        image = image[..., None].expand(-1, -1, 3)
    image = image[..., :3].permute(2, 0, 1).contiguous()  # (H, W, C) -> (3, H, W); drops alpha
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    return image.float().clamp_(0.0, 1.0)


def sample_photos(names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """{name: (3, H, W) float32 in [0, 1]} for the named photos (default: all of PHOTOS), in the given order.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
        ConvoptError: the package shipping a requested photo is not installed.
    """
    names = list(PHOTOS) if names is None else list(names)
    if not names:
        raise ConfigError("names=[]: ask for at least one photo, or pass None for all of them")
    return {name: _load(name) for name in names}


def random_crops(photos: Sequence[torch.Tensor], count: int, *, size: int = 224, seed: int = 0,
                 scale: tuple[float, float] = (0.35, 1.0), flip: bool = True) -> torch.Tensor:  # fmt: skip
    """`count` square crops resized to (size, size), cycling through `photos` so each gets its share.

    Each crop's side is a uniform fraction in `scale` of the photo's shorter side, at a uniform position,
    resized with antialiased bilinear interpolation, and mirrored with probability 1/2 when `flip`. The same
    arguments always give the same crops (a private torch.Generator seeded with `seed`).

    Args:
        photos: (3, H, W) float images.
        count: number of crops (>= 1).
    Returns:
        (count, 3, size, size) float32, values in the photos' range.
    Raises:
        ConfigError: no photo, count < 1, size < 1 or a scale outside (0, 1].
    """
    if not photos or count < 1 or size < 1:
        raise ConfigError(f"{len(photos)} photo(s), count={count}, size={size}: pass at least one photo, count >= 1 "
                          "and size >= 1")  # fmt: skip
    low, high = scale
    if not 0 < low <= high <= 1:
        raise ConfigError(f"scale={scale}: use 0 < low <= high <= 1 (fractions of the photo's shorter side)")
    generator = torch.Generator().manual_seed(seed)
    crops = torch.empty(count, 3, size, size)
    for index in range(count):
        image = photos[index % len(photos)]
        height, width = image.shape[-2:]
        fraction = low + (high - low) * float(torch.rand(1, generator=generator))
        side = max(1, int(min(height, width) * fraction))
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        patch = image[None, :3, top : top + side, left : left + side].float()
        crop = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        mirror = bool(torch.rand(1, generator=generator) < 0.5)
        crops[index] = crop.flip(-1) if flip and mirror else crop
    return crops


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> the torchvision ImageNet models' input: (x - mean) / std per channel."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def photo_crops(names: Sequence[str], count: int, *, size: int = 224, seed: int = 0,
                normalize: bool = True) -> torch.Tensor:  # fmt: skip
    """`count` crops (N, 3, size, size) of the named photos, ImageNet-normalised when `normalize`."""
    crops = random_crops(list(sample_photos(names).values()), count, size=size, seed=seed)
    return imagenet_normalize(crops) if normalize else crops


__all__ = [
    "CALIBRATION_PHOTOS", "EVALUATION_PHOTOS", "IMAGENET_MEAN", "IMAGENET_STD", "PHOTOS", "imagenet_normalize",
    "photo_crops", "random_crops", "sample_photos",
]  # fmt: skip
