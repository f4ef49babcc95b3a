"""Regression tests for bugs found in review: each failed before its fix."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import convopt
from convopt.artifacts import load, save_optimized
from convopt.models import default_model
from convopt.transforms.backend import InductorModule, OnnxRuntimeModule
from convopt.transforms.layout import LayoutConfig, convert_layout


def test_layout_converts_mixed_2d_and_3d_models_per_rank():
    model = nn.ModuleDict({"a": nn.Conv2d(2, 2, 3), "b": nn.Conv3d(2, 2, 3)})
    convert_layout(model, "channels_last")
    assert model["a"].weight.is_contiguous(memory_format=torch.channels_last)
    assert model["b"].weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_optimize_handles_conv3d_models(tmp_path):
    from convopt.optimize import optimize
    from convopt.search.cache import TuningCache

    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 3, padding=1)).eval()
    result = optimize(model, torch.rand(1, 2, 8, 8, 8), repeats=1, compare_backends=True,
                      cache=TuningCache(1, tmp_path / "tuning.json"))  # fmt: skip
    assert result.report.max_rel_error < 1e-4
    assert result.report.backends["torch.compile"]["unavailable"] is None


@pytest.mark.parametrize("kind", ["constant", "broadcast"])
def test_fusion_keeps_constant_and_broadcasting_adds_correct(kind):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            if kind == "constant":
                return torch.relu(self.conv(x) + 1.0)
            return x + self.conv(x.mean((2, 3), keepdim=True))  # GCNet-style context add

    model, x = Net().eval(), torch.rand(2, 4, 8, 8)
    fused, _ = convopt.apply(model, convopt.FuseConfig(), example_inputs=x)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))


@pytest.mark.parametrize("wrapper", [OnnxRuntimeModule, InductorModule])
def test_backend_wrappers_follow_weight_updates(wrapper):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU()).eval()
    wrapped, x = wrapper(model), torch.rand(1, 2, 6, 6)
    with torch.no_grad():
        wrapped(x)
        model[0].weight.mul_(2.0)
        torch.testing.assert_close(wrapped(x), model(x), rtol=1e-4, atol=1e-4)


def test_recipes_that_name_code_need_trust(tmp_path):
    source = tmp_path / "net.py"
    marker = tmp_path / "ran"
    source.write_text(f"import pathlib, torch.nn as nn\ndef build():\n    pathlib.Path(r'{marker}').touch()\n"
                      "    return nn.Sequential(nn.Conv2d(1, 1, 3))\n")  # fmt: skip
    model = nn.Sequential(nn.Conv2d(1, 1, 3))
    save_optimized(model, tmp_path / "out", source=f"{source}:build", input_shape=[1, 1, 8, 8],
                   config=convopt.Compose([]))  # fmt: skip
    with pytest.raises(convopt.ModelLoadError, match="names code to run"):
        load(tmp_path / "out")
    assert not marker.exists()
    assert isinstance(load(tmp_path / "out", trust_code=True), nn.Module) and marker.exists()


def test_nested_compose_runs_and_compose_modules_is_refused():
    recipe = convopt.Compose([convopt.Compose([convopt.FoldBatchNormConfig()]), LayoutConfig("contiguous")])
    report = convopt.apply_(default_model(), recipe)
    assert [s.config["type"] for s in report.steps] == ["FoldBatchNormConfig", "LayoutConfig"]
    with pytest.raises(convopt.ConfigError, match="its own modules"):
        convopt.Compose([convopt.FoldBatchNormConfig()], modules="layer1.*")


def test_nan_outputs_break_the_budget():
    from dataclasses import dataclass

    from convopt.transforms.config import StepRecord, TransformConfig, register_transform

    @dataclass(frozen=True)
    class _PoisonConfig(TransformConfig):
        pass

    @register_transform(_PoisonConfig)
    def _poison(model, config, context):
        with torch.no_grad():
            model.fc.bias.fill_(math.nan)
        return StepRecord(config.to_dict())

    with pytest.raises(convopt.BudgetExceededError):
        convopt.apply_(default_model(), _PoisonConfig(), example_inputs=torch.rand(1, 1, 28, 28))


def test_relative_model_paths_are_recorded_absolute(tmp_path, monkeypatch):
    from convopt.cli_optimize import _portable_source

    (tmp_path / "net.py").write_text("x = 1\n")
    monkeypatch.chdir(tmp_path)
    assert _portable_source("net.py:build") == f"{tmp_path / 'net.py'}:build"
    assert _portable_source("torchvision:resnet18") == "torchvision:resnet18" and _portable_source(None) is None
