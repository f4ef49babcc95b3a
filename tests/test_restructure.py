"""StructureConfig: a compressed architecture is recorded in the recipe and rebuilt exactly on load."""

import json

import pytest
import torch
from torch import nn

from convopt.errors import ConfigError
from convopt.transforms.config import config_from_dict
from convopt.transforms.pipeline import apply
from convopt.transforms.restructure import StructureConfig, build, describe


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))  # fmt: skip


def _compressed(original: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    changed = _net()
    changed.load_state_dict(original.state_dict())
    changed[0] = nn.Conv2d(3, 8, 3, padding=1)  # pruned: 16 -> 8 channels
    changed[1] = nn.BatchNorm2d(8)
    changed[3] = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.Conv2d(4, 4, 3, padding=1, bias=False),
                               nn.Conv2d(4, 32, 1, bias=False))  # decomposed (Tucker-2)  # fmt: skip
    return changed


def test_capture_records_only_changed_layers_and_replays_exactly():
    torch.manual_seed(0)
    original = _net().eval()
    changed = _compressed(original).eval()
    config = StructureConfig.capture(original, changed)
    assert sorted(config.layers) == ["0", "1", "3"]
    replayed_config = config_from_dict(json.loads(json.dumps(config.to_dict())))
    torch.manual_seed(5)
    rebuilt, record = apply(_net(), replayed_config)
    assert sorted(record.steps[0].changed) == ["0", "1", "3"]
    rebuilt.load_state_dict(changed.state_dict(), strict=True)  # shapes line up exactly
    x = torch.randn(2, 3, 12, 12)
    assert torch.equal(rebuilt.eval()(x), changed(x))


def test_describe_round_trips_every_allowed_layer_kind():
    for module in (nn.Conv1d(4, 6, 3, stride=2, groups=2), nn.ConvTranspose2d(4, 6, 3, output_padding=1, stride=2),
                   nn.Conv3d(2, 2, 3, padding="same"), nn.BatchNorm1d(7, eps=1e-3), nn.Linear(5, 3, bias=False),
                   nn.ReLU(inplace=True), nn.Flatten(2)):  # fmt: skip
        assert describe(build(json.loads(json.dumps(describe(module))))) == describe(module)


def test_unknown_layer_types_are_refused():
    with pytest.raises(ConfigError, match="allow-list"):
        build({"type": "os.system", "args": {}})
    with pytest.raises(ConfigError, match="cannot record"):
        describe(nn.LSTM(3, 3))
    with pytest.raises(ConfigError, match="cannot be built"):
        StructureConfig(layers={"0": {"type": "Conv2d", "args": {"in_channels": 3}}})


def test_lossy_steps_record_their_error_instead_of_failing_the_budget():
    from convopt.transforms import DecomposeConfig, FoldBatchNormConfig

    torch.manual_seed(0)
    model, x = _net().eval(), torch.randn(2, 3, 12, 12)
    _, report = apply(model, DecomposeConfig("tucker", rank=2, modules="3"), example_inputs=x)  # default budget 1e-4
    assert report.steps[0].max_rel_error > 1e-4  # recorded, not raised
    assert DecomposeConfig.lossy and not getattr(FoldBatchNormConfig, "lossy", False)

