"""`analyze` reproduces torchvision's published GMACs (`_ops`) and parameter counts (REFERENCES.md s.1)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import convopt

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "vgg16", "alexnet"]
# The figures of REFERENCES.md section 1, typed in so the test also catches a torchvision metadata change.
PUBLISHED = {
    "alexnet": (0.714, 61_100_840), "vgg16": (15.470, 138_357_544), "resnet18": (1.814, 11_689_512),
    "resnet50": (4.089, 25_557_032), "mobilenet_v2": (0.301, 3_504_872),
    "mobilenet_v3_large": (0.217, 5_483_032), "efficientnet_b0": (0.386, 5_288_548),
}  # fmt: skip


def within_published_rounding(ours: float, published: float) -> bool:
    return abs(ours - published) <= 0.0005 + 0.001 * published


def meta_model(name: str):
    """Build on the meta device: exact shapes, no memory, no weight initialisation time."""
    with torch.device("meta"):
        return torchvision.models.get_model(name).eval()


@pytest.mark.parametrize("name", MODELS)
def test_matches_torchvision_published_ops_and_params(name):
    weights = torchvision.models.get_model_weights(name).DEFAULT
    gmacs, params = weights.meta["_ops"], weights.meta["num_params"]
    assert (gmacs, params) == pytest.approx(PUBLISHED[name])
    crop = weights.transforms().crop_size[0]
    report = convopt.analyze(meta_model(name), torch.empty(1, 3, crop, crop, device="meta"), hardware=None)
    assert within_published_rounding(report.macs / 1e9, gmacs), (name, report.macs / 1e9, gmacs)
    assert report.params == params


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large", "efficientnet_b0", "alexnet"])
def test_totals_equal_flop_counter_mode(name):
    model, x = meta_model(name), torch.empty(2, 3, 160, 160, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert 2 * convopt.analyze(model, x, hardware=None).macs == counter.get_total_flops()


def test_real_weights_give_the_same_count_as_meta():
    model = torchvision.models.resnet18().eval()
    real = convopt.analyze(model, torch.rand(1, 3, 224, 224), hardware=None)
    meta = convopt.analyze(meta_model("resnet18"), torch.empty(1, 3, 224, 224, device="meta"), hardware=None)
    assert real.macs == meta.macs and real.other_ops == meta.other_ops
    assert [layer.name for layer in real.layers] == [layer.name for layer in meta.layers]
