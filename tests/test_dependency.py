"""Channel dependency graph: coupled channels (residual, concat, depthwise, grouped, SE, flatten) and blocking."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision
from torch import nn

from convopt.errors import UntraceableModelError
from convopt.models import default_model
from convopt.transforms import PruneConfig, prune_
from convopt.transforms.dependency import build_dependency_graph
from convopt.transforms.prune_select import CostModel
from convopt.transforms.prune_structured import layer_costs

pytestmark = pytest.mark.usefixtures("one_thread")


def unit_of(graph, layer: str, side: str, index: int):
    variables = graph.layers[layer].in_vars if side == "in" else graph.layers[layer].out_vars
    return graph.units.get(graph.root_of[variables[index]])


def randomise_bn(model: nn.Module) -> nn.Module:
    """Trained-looking BatchNorm statistics, so that a channel that is not exactly zero would show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


@torch.no_grad()
def zero_units(graph, roots) -> None:
    """Make the channels of the given units exactly zero where they are made (filters, biases, BatchNorm
    scale/shift/mean); the layers that read them keep their (non-zero) weights."""
    for root in roots:
        for (name, side), idx in graph.units[root].members.items():
            module = graph.layers[name].module
            if graph.layers[name].kind == "norm":
                for t in (module.weight, module.bias, module.running_mean):
                    t[idx] = 0
            elif side == "out":
                module.weight[idx] = 0
                if module.bias is not None:
                    module.bias[idx] = 0


def test_resnet_residual_stream_is_one_unit():
    graph = build_dependency_graph(torchvision.models.resnet18().eval(), (torch.rand(1, 3, 64, 64),))
    unit = unit_of(graph, "conv1", "out", 5)
    for layer, side in [("layer1.0.conv2", "out"), ("layer1.1.conv2", "out"), ("bn1", "out"), ("layer1.0.conv1", "in"),
                        ("layer2.0.conv1", "in"), ("layer2.0.downsample.0", "in")]:  # fmt: skip
        assert unit.members[(layer, side)] == [5]
    assert unit_of(graph, "layer1.0.conv1", "out", 5) is not unit  # the block's inner channels are free
    assert "fc" in graph.blocked and "output" in graph.blocked["fc"]


def test_depthwise_ties_input_and_output_channels():
    graph = build_dependency_graph(torchvision.models.mobilenet_v2().eval(), (torch.rand(1, 3, 64, 64),))
    dw = "features.2.conv.1.0"  # 96 -> 96, groups 96
    assert graph.layers[dw].module.groups == 96
    unit = unit_of(graph, dw, "out", 7)
    assert unit.members[(dw, "in")] == [7] and unit.members[("features.2.conv.0.0", "out")] == [7]


def test_grouped_conv_units_are_whole_groups():
    model = torchvision.models.regnet_x_400mf().eval()
    graph = build_dependency_graph(model, (torch.rand(1, 3, 64, 64),))
    grouped = [n for n, l in graph.layers.items() if l.kind == "conv" and 1 < l.module.groups < l.module.in_channels]
    assert grouped
    for name in grouped:
        width = graph.layers[name].module.out_channels // graph.layers[name].module.groups
        for k in range(0, graph.layers[name].module.out_channels, width):
            members = unit_of(graph, name, "out", k).members
            assert members[(name, "out")] == list(range(k, k + width))
            assert members[(name, "in")] == list(range(k, k + width))


def test_squeeze_excitation_multiply_couples_channels():
    graph = build_dependency_graph(torchvision.models.efficientnet_b0().eval(), (torch.rand(1, 3, 64, 64),))
    unit = unit_of(graph, "features.2.0.block.1.0", "out", 3)  # depthwise conv of one MBConv
    assert unit.members[("features.2.0.block.2.fc2", "out")] == [3]  # SE scale, multiplied channelwise
    assert unit.members[("features.2.0.block.2.fc1", "in")] == [3]
    assert unit.members[("features.2.0.block.3.0", "in")] == [3]  # projection conv


class CatFlatten(nn.Module):
    """Two branches concatenated, a conv on top, flattened into a linear head."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.mix = nn.Conv2d(10, 5, 3, stride=2, padding=1)
        self.head = nn.Linear(5 * 2 * 2, 3)

    def forward(self, x):
        y = torch.relu(self.mix(torch.cat([self.a(x), torch.relu(self.b(x))], dim=1)))
        return self.head(torch.flatten(y, 1))


def test_concat_offsets_and_flatten_into_linear():
    graph = build_dependency_graph(CatFlatten().eval(), (torch.rand(1, 3, 4, 4),))
    assert unit_of(graph, "b", "out", 2).members[("mix", "in")] == [4 + 2]  # offset by branch a's 4 channels
    assert unit_of(graph, "a", "out", 3).members[("mix", "in")] == [3]
    assert unit_of(graph, "mix", "out", 1).members[("head", "in")] == [4, 5, 6, 7]  # channel 1 of 2x2 maps


class Unknown(nn.Module):
    def __init__(self, shape_literal: bool):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4 * 2 * 2, 2)
        self.shape_literal = shape_literal

    def forward(self, x):
        x = torch.roll(self.conv1(x), 1, dims=1)  # a channel shuffle the walker does not know
        x = self.conv3(self.conv2(x))
        return self.fc(x.view(-1, 16) if self.shape_literal else x.flatten(1))


def test_unknown_ops_and_hard_coded_reshapes_block_with_a_reason():
    x = torch.rand(2, 3, 6, 6)
    graph = build_dependency_graph(Unknown(False).eval(), (x,))
    assert "roll" in graph.blocked["conv1"]
    assert unit_of(graph, "conv1", "out", 0) is None and unit_of(graph, "conv2", "out", 0) is not None
    graph = build_dependency_graph(Unknown(True).eval(), (x,))
    assert "view" in graph.blocked["conv3"]
    for literal in (False, True):  # pruning then leaves those channels alone and the model still runs
        model = Unknown(literal).eval()
        record = prune_(model, PruneConfig(kind="structured", ratio=0.3, max_layer_ratio=0.9), example_inputs=x)
        assert model.conv1.out_channels == 8 and model.conv2.out_channels < 8
        assert "conv1" in record.skipped and model(x).shape == (2, 2)


class DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_untraceable_model_names_the_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), DataDependent(), nn.Conv2d(4, 4, 3))
    with pytest.raises(UntraceableModelError, match="'1'"):
        prune_(model, PruneConfig(kind="structured", ratio=0.5), example_inputs=torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("name", ["default", "resnet18", "mobilenet_v2", "efficientnet_b0", "regnet_x_400mf"])
def test_pruning_exactly_zero_channels_keeps_the_outputs(name):
    """Zeroed channels have BatchNorm importance 0; pruning just them must not change the outputs at all,
    which holds only if every coupled layer (residual partners, BN, depthwise, SE, head) lost the same
    indices: a consumer dropping any other input channel, or a partner keeping a zeroed one, shows.
    (resnet50's couplings -- residual adds with projections -- are resnet18's; it is covered by the
    shape checks in test_prune_structured.py.)"""
    model = randomise_bn(default_model() if name == "default" else torchvision.models.get_model(name))
    x = torch.rand(2, *((1, 28, 28) if name == "default" else (3, 64, 64)))
    graph = build_dependency_graph(model, (x,))
    rng = random.Random(0)
    by_space: dict[tuple, list[int]] = {}
    for root, unit in graph.units.items():
        if not any(graph.layers[n].kind == "norm" for n, _ in unit.members):
            continue  # e.g. squeeze-excitation bottlenecks: "bn" scores them by L1, so they are not zero
        by_space.setdefault(tuple(sorted(unit.producers)), []).append(root)
    chosen = [r for roots in by_space.values() for r in rng.sample(roots, len(roots) // 4)]
    zero_units(graph, chosen)
    with torch.no_grad():
        before = model(x)
    cost = CostModel(graph, layer_costs(graph, "macs"))
    ratio = 1 - cost.total(set(chosen)) / cost.total(set())
    record = prune_(model, PruneConfig(kind="structured", ratio=ratio, criterion="bn"), example_inputs=x)
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))
    assert record.macs_after / record.macs_before == pytest.approx(1 - ratio, rel=0.05)
    assert len(record.changed) > 5
