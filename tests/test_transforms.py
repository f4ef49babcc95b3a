"""Transform configs: BatchNorm folding, algorithm selection, Compose, selectors, JSON recipes, budgets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torchvision
from torch import nn

import convopt
from convopt.models import default_model
from convopt.transforms import config_from_json, config_to_json, register_transform
from convopt.transforms.config import StepRecord, TransformConfig


def with_random_bn_stats(model: nn.Module) -> nn.Module:
    """Trained-looking BatchNorm statistics, so folding is a real change (fresh BNs are identities)."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


def test_fold_batchnorm_on_the_default_model():
    model, x = with_random_bn_stats(default_model()), torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
    report = convopt.apply_(model, convopt.FoldBatchNormConfig(), example_inputs=x)
    assert len(report.steps[0].changed) == 9
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert report.max_rel_error < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_fold_batchnorm_on_torchvision_models(name):
    model = with_random_bn_stats(torchvision.models.get_model(name))
    x = torch.rand(1, 3, 96, 96)
    copy, report = convopt.apply(model, convopt.FoldBatchNormConfig(), example_inputs=x)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # apply worked on a copy
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert report.max_rel_error < 1e-4


def test_fold_skips_with_reasons():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output has a second user: folding would change it

    model = TwoUsers().eval()
    report = convopt.apply_(model, convopt.FoldBatchNormConfig(), example_inputs=torch.rand(1, 3, 8, 8))
    assert report.steps[0].changed == {} and "other node" in report.steps[0].skipped["conv + bn"]
    training = default_model().train()
    record = convopt.apply_(training, convopt.FoldBatchNormConfig()).steps[0]
    assert not record.changed and all("training mode" in why for why in record.skipped.values())


def test_untraceable_model_names_the_module():
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # data-dependent control flow

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gate = nn.Conv2d(1, 1, 3), Branchy()

        def forward(self, x):
            return self.gate(self.conv(x))

    with pytest.raises(convopt.UntraceableModelError, match="module 'gate'"):
        convopt.apply_(Outer().eval(), convopt.FoldBatchNormConfig())


def test_algorithm_config_records_each_layer_and_keeps_outputs():
    model, x = default_model(), torch.rand(2, 1, 28, 28)
    report = convopt.apply_(model, convopt.AlgorithmConfig("im2col", modules="layer1.*"), example_inputs=x)
    assert set(report.steps[0].changed) == {"layer1.conv1", "layer1.conv2"}
    assert type(model.layer1.conv1).__name__ == "AlgoConv2d" and type(model.stem[0]) is nn.Conv2d
    assert report.max_rel_error < 1e-5


def test_algorithm_config_validates_the_name():
    with pytest.raises(convopt.ConfigError, match="use 'auto' or one of"):
        convopt.AlgorithmConfig("fastest-please")


def test_recipes_round_trip_through_json():
    recipe = convopt.Compose([convopt.FoldBatchNormConfig(), convopt.AlgorithmConfig("im2col", modules="layer*")])
    again = config_from_json(config_to_json(recipe))
    assert again == recipe and again.steps[1].modules == "layer*"
    with pytest.raises(convopt.ConfigError, match="unknown transform config 'Evil'"):
        config_from_json('{"type": "Evil"}')
    with pytest.raises(convopt.ConfigError, match="has no field"):
        config_from_json('{"type": "AlgorithmConfig", "algorithm": "im2col", "speed": 11}')
    with pytest.raises(convopt.ConfigError, match="not valid JSON"):
        config_from_json("{")


@dataclass(frozen=True)
class _ScaleWeightsConfig(TransformConfig):
    """Test-only transform that breaks the model on purpose."""

    factor: float = 1.5


@register_transform(_ScaleWeightsConfig)
def _scale_weights(model, config, context):
    with torch.no_grad():
        model.fc.weight.mul_(config.factor)
    return StepRecord(config.to_dict(), changed={"fc": f"weights x{config.factor}"})


def test_a_step_over_the_error_budget_raises():
    model, x = default_model(), torch.rand(2, 1, 28, 28)
    with pytest.raises(convopt.BudgetExceededError, match="_ScaleWeightsConfig changed the outputs"):
        convopt.apply_(model, convopt.Compose([convopt.FoldBatchNormConfig(), _ScaleWeightsConfig()]), example_inputs=x)
    original = default_model()
    copy, _ = convopt.apply(original, _ScaleWeightsConfig(factor=1.0), example_inputs=x)
    assert copy is not original


def test_apply_rejects_non_configs():
    with pytest.raises(convopt.ConfigError, match="takes a transform config"):
        convopt.apply_(default_model(), "fold_bn")


def test_fuse_conv_add_activation_on_resnet18():
    model = with_random_bn_stats(torchvision.models.resnet18())
    x = torch.rand(2, 3, 64, 64)
    recipe = convopt.Compose([convopt.FoldBatchNormConfig(), convopt.FuseConfig()])
    fused, report = convopt.apply(model, recipe, example_inputs=x)
    changed = report.steps[1].changed
    assert sum(v == "conv + add + relu" for v in changed.values()) == 8  # every BasicBlock's second conv
    assert sum(v == "conv + relu" for v in changed.values()) == 9  # the stem and every first conv
    assert all("no add or activation" in why for why in report.steps[1].skipped.values())  # downsamples
    assert report.max_rel_error < 1e-4
    conv_keys = {k for k in model.state_dict() if "conv" in k or "downsample.0" in k}
    assert conv_keys <= set(fused.state_dict())  # parameters keep their state-dict keys
    other = torch.rand(3, 3, 64, 64)  # a new batch size and new data: the graph is shape-agnostic
    with torch.no_grad():
        torch.testing.assert_close(fused(other), model(other), rtol=1e-4, atol=1e-4)


def test_fuse_handles_functional_activations_and_refuses_in_place():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x)) + 1

    fused, report = convopt.apply(Functional().eval(), convopt.FuseConfig(), example_inputs=torch.rand(1, 3, 8, 8))
    assert report.steps[0].changed == {"conv": "conv + relu"}
    with pytest.raises(convopt.ConfigError, match="use convopt.apply"):
        convopt.apply_(Functional().eval(), convopt.FuseConfig())


def test_layout_config_converts_and_measures():
    from convopt.transforms import LayoutConfig

    model, x = default_model(), torch.rand(2, 1, 28, 28)
    convopt.apply_(model, LayoutConfig("channels_last"), example_inputs=x)
    assert model.layer1.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    record = convopt.apply_(model, LayoutConfig("auto", repeats=1), example_inputs=x).steps[0]
    assert record.changed["*"] in ("contiguous", "channels_last") and "chose" in record.notes[0]
    with pytest.raises(convopt.ConfigError, match="pass example_inputs"):
        convopt.apply_(model, LayoutConfig("auto"))
    with pytest.raises(convopt.ConfigError, match="memory_format"):
        LayoutConfig("nhwc")


def test_fused_model_stays_differentiable():
    model = with_random_bn_stats(default_model())
    fused, _ = convopt.apply(model, convopt.Compose([convopt.FoldBatchNormConfig(), convopt.FuseConfig()]))
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    fused(x).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    model(reference).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-3, atol=1e-5)


def test_models_with_cached_sparse_weights_can_be_copied():
    import copy

    model = default_model()
    convopt.apply_(model, convopt.AlgorithmConfig("sparse", modules="layer1.*"))
    x = torch.rand(1, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)  # fills the sparse weight cache
        torch.testing.assert_close(copy.deepcopy(model)(x), expected)


def test_backend_config_wraps_for_inductor_and_keeps_eager_for_training():
    from convopt.transforms.backend import InductorModule

    model, x = default_model(), torch.rand(2, 1, 28, 28)
    wrapped, report = convopt.apply(model, convopt.BackendConfig("inductor"))
    assert isinstance(wrapped, InductorModule) and "inductor" in report.steps[0].changed["*"]
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in model.state_dict()}
    torch.testing.assert_close(wrapped(x), model(x))  # grad mode: runs eagerly, no compilation
    assert wrapped._compiled is None
    with pytest.raises(convopt.ConfigError, match="backend"):
        convopt.BackendConfig("tensorrt")


def test_onnxruntime_backend_matches_and_keeps_state_dict_keys():
    from convopt.transforms.backend import OnnxRuntimeModule

    model = default_model()
    wrapped, _ = convopt.apply(model, convopt.BackendConfig("onnxruntime"))
    assert isinstance(wrapped, OnnxRuntimeModule)
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in model.state_dict()}
    with torch.no_grad():
        for batch in (3, 5):  # exported with a dynamic batch dimension
            x = torch.rand(batch, 1, 28, 28)
            torch.testing.assert_close(wrapped(x), model(x), rtol=1e-4, atol=1e-4)
