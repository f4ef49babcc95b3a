"""Structured pruning: MAC targets on torchvision models, coupled shapes, criteria, configs, schedules, errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import convopt
from convopt.data import load_mnist
from convopt.errors import BudgetExceededError, ConfigError
from convopt.models import default_model
from convopt.transforms import (
    PruneConfig, PruneRecord, config_from_json, config_to_json, parse_prune_spec, prune_, prune_iteratively,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")
MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "regnet_x_400mf"]


def macs(model: nn.Module, x: torch.Tensor) -> int:
    return convopt.analyze(model, x, hardware=None).macs  # independent of the pruner's own MAC count


def kinds_of_convs(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    return {n: (m.in_channels, m.out_channels, m.groups) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_models_pruned_to_half_their_macs(name):
    model = torchvision.models.get_model(name).eval()
    x = torch.rand(1, 3, 64, 64)
    before, convs = macs(model, x), kinds_of_convs(model)
    streams = residual_widths(model) if name.startswith("resnet") else []
    record = prune_(model, PruneConfig(kind="structured", ratio=0.5), example_inputs=x)
    assert model(x).shape == (1, 1000)
    assert macs(model, x) / before == pytest.approx(0.5, rel=0.05)
    assert record.macs_after == macs(model, x) and record.macs_before == before
    after = kinds_of_convs(model)
    for conv, (c_in, c_out, groups) in convs.items():
        new_in, new_out, new_groups = after[conv]
        if groups == c_in == c_out:  # depthwise stays depthwise
            assert new_groups == new_in == new_out
        elif groups > 1:  # grouped: whole groups removed, the group width is unchanged
            assert (new_in // new_groups, new_out // new_groups) == (c_in // groups, c_out // groups)
    assert sum(after[c][1] < convs[c][1] for c in convs) >= 5  # really pruned
    if streams:  # residual partners agree, and the streams themselves were pruned
        assert any(a < b for a, b in zip(residual_widths(model), streams))
    layer = next(v for v in record.layers.values() if v["kind"] == "conv")
    assert layer["macs_after"] < layer["macs_before"] and layer["params_after"] < layer["params_before"]


def residual_widths(model: nn.Module) -> list[int]:
    """The width of each residual stream, checking that all its members (block outputs, projection,
    next blocks' inputs, the head) agree."""
    stream = []
    for stage in [model.layer1, model.layer2, model.layer3, model.layer4]:
        last = [getattr(block, "conv3", None) or block.conv2 for block in stage]
        widths = {c.out_channels for c in last} | {block.conv1.in_channels for block in stage[1:]}
        if stage[0].downsample is not None:
            widths.add(stage[0].downsample[0].out_channels)
        assert len(widths) == 1, widths
        stream.extend(widths)
    assert model.fc.in_features == last[-1].out_channels and model.fc.out_features == 1000
    return stream


def test_default_model_with_layer_scope_rounding_and_bn_criterion():
    model, x = default_model(), torch.rand(1, 1, 28, 28)
    record = prune_(model, PruneConfig(kind="structured", ratio=0.4, scope="layer", round_to=8, criterion="bn"))
    assert macs(model, x) / record.macs_before == pytest.approx(0.6, rel=0.05)
    widths = [m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n in record.layers]
    assert widths and all(w % 8 == 0 for w in widths)
    assert model(x).shape == (1, 10)


def test_taylor_and_latency_targets_on_the_default_model():
    x, y = load_mnist("train")
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]
    model = default_model()
    record = prune_(model, PruneConfig(kind="structured", ratio=0.5, criterion="taylor"), calibration=batches)
    assert record.macs_after / record.macs_before == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ConfigError, match="needs data"):
        prune_(default_model(), PruneConfig(kind="structured", ratio=0.5, criterion="taylor"))
    with pytest.raises(ConfigError, match="labelled"):
        prune_(default_model(), PruneConfig(kind="structured", ratio=0.5, criterion="taylor"), calibration=[x[:8]])
    model = default_model()
    record = prune_(model, PruneConfig(kind="structured", ratio=0.3, target="latency"))
    assert record.cost_fraction == pytest.approx(0.7, rel=0.05) and record.macs_after < record.macs_before


def test_modules_pattern_limits_what_is_pruned():
    model = default_model()
    record = prune_(model, PruneConfig(kind="structured", ratio=0.1, modules="layer3.conv1"))
    assert set(record.changed) == {"layer3.conv1", "layer3.bn1", "layer3.conv2"}
    assert model.layer3.conv1.out_channels < 64 and model.layer3.conv2.out_channels == 64


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5])
def test_ratio_outside_zero_one_is_rejected(ratio):
    for kind in ("structured", "unstructured"):
        with pytest.raises(ConfigError, match="strictly between 0 and 1"):
            PruneConfig(kind=kind, ratio=ratio)


def test_bad_configs_and_patterns():
    with pytest.raises(ConfigError, match="needs ratio"):
        PruneConfig(kind="structured")
    with pytest.raises(ConfigError, match="criterion"):
        PruneConfig(kind="structured", ratio=0.5, criterion="random")
    with pytest.raises(ConfigError, match="matches no conv/linear layer"):
        prune_(default_model(), PruneConfig(kind="structured", ratio=0.5, modules="encoder.*"))
    with pytest.raises(ConfigError, match="none has prunable output channels"):
        prune_(default_model(), PruneConfig(kind="structured", ratio=0.5, modules="fc"))
    with pytest.raises(ConfigError, match="example inputs"):
        prune_(nn.Sequential(nn.Conv2d(3, 4, 3)), PruneConfig(kind="structured", ratio=0.5))
    with pytest.raises(BudgetExceededError, match="can remove at most"):
        prune_(default_model(), PruneConfig(kind="structured", ratio=0.95, max_layer_ratio=0.5))


def test_config_json_round_trip_and_cli_spec():
    config = PruneConfig(kind="structured", ratio=0.5, criterion="bn", round_to=8, modules="layer*")
    assert config_from_json(config_to_json(config)) == config
    assert parse_prune_spec("structured:0.5") == PruneConfig(kind="structured", ratio=0.5)
    assert parse_prune_spec("2:4") == PruneConfig(kind="n:m", n=2, m=4)
    for bad in ("structured:x", "structured:1.5", "4:2"):
        with pytest.raises(ConfigError):
            parse_prune_spec(bad)


def test_apply_runs_pruning_as_a_recipe_step():
    model, x = default_model(), torch.rand(2, 1, 28, 28)
    pruned, report = convopt.apply(model, PruneConfig(kind="structured", ratio=0.5), example_inputs=x,
                                   max_rel_error=float("inf"))  # fmt: skip
    step = report.steps[0]
    assert isinstance(step, PruneRecord) and step.layers and step.macs_after < step.macs_before
    assert macs(pruned, x) < macs(model, x) and "layers" in report.to_dict()["steps"][0]


def _mnist_eval():
    x, y = load_mnist("test")
    x, y = x[::5], y[::5]  # 200 digits, 20 per class

    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean()) * 100

    return evaluate


def test_iterative_schedule_reaches_the_target_and_calls_finetune():
    model, calls = default_model(), []
    schedule = prune_iteratively(model, PruneConfig(kind="structured", ratio=0.5), steps=3,
                                 finetune=lambda m, step: calls.append(step), evaluate=_mnist_eval())  # fmt: skip
    assert calls == [1, 2, 3] and [t["step"] for t in schedule.trajectory] == [0, 1, 2, 3]
    ratios = [t["ratio"] for t in schedule.trajectory]
    assert ratios == sorted(ratios) and ratios[-1] == pytest.approx(0.5, rel=0.05)
    assert all(t["accuracy"] is not None for t in schedule.trajectory)


def test_iterative_budget_that_cannot_be_met_raises_with_the_best_figure():
    model = default_model()
    evaluate = _mnist_eval()
    with pytest.raises(BudgetExceededError, match="best within budget is ratio") as info:
        prune_iteratively(model, PruneConfig(kind="structured", ratio=0.6), steps=2, evaluate=evaluate,
                          max_accuracy_drop=0.5)  # fmt: skip
    assert evaluate(info.value.best_model) >= evaluate(default_model()) - 0.5
    with pytest.raises(ConfigError, match="needs evaluate"):
        prune_iteratively(default_model(), PruneConfig(kind="structured", ratio=0.5), steps=2, max_accuracy_drop=1.0)
