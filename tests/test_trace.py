"""The tracer: functional calls, matmuls, module attribution, and errors that name the failing layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import convopt
from convopt.analysis.cost import layers_from_trace
from convopt.analysis.trace import trace_forward
from convopt.models import default_model


class FunctionalNet(nn.Module):
    """Convs and matmuls written as functional calls, the cases FLOP counters tend to miss."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.w2 = nn.Parameter(torch.randn(8, 2, 3, 3))  # grouped, groups=4
        self.wt = nn.Parameter(torch.randn(8, 4, 2, 2))  # transposed
        self.proj = nn.Parameter(torch.randn(16, 10))
        self.head = nn.Linear(10, 5)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w1, padding=1))
        x = F.conv2d(x, self.w2, padding="same", groups=4)
        x = F.conv_transpose2d(x, self.wt, stride=2)  # (N, 4, 16, 16)
        tokens = x.flatten(2)  # (N, 4, 256)
        attn = torch.einsum("bij,bkj->bik", tokens, tokens)  # (N, 4, 4) via bmm
        mixed = torch.bmm(attn.softmax(-1), tokens)  # (N, 4, 256)
        pooled = mixed.reshape(x.shape[0], 4, 16, 16).mean(dim=(2, 3))  # (N, 4)
        feats = torch.cat([pooled, pooled, pooled, pooled], dim=1)  # (N, 16)
        return self.head(feats @ self.proj)


def flop_counter_macs(model, x):
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def test_functional_convs_and_matmuls_are_counted_exactly():
    model, x = FunctionalNet(), torch.randn(2, 3, 8, 8)
    report = convopt.analyze(model, x, hardware=None)
    assert report.macs == flop_counter_macs(model, x)
    expected = (
        2 * 8 * 64 * 3 * 9  # conv 3->8
        + 2 * 8 * 64 * 2 * 9  # grouped conv
        + 2 * 8 * 64 * 4 * 4  # transposed: N * C_in * H*W * C_out/g * K
        + 2 * 4 * 256 * 4  # einsum (bmm): b * i * j * k
        + 2 * 4 * 4 * 256  # bmm
        + 2 * 16 * 10  # x @ w
        + 2 * 10 * 5  # linear
    )
    assert report.macs == expected
    kinds = [layer.kind for layer in report.layers]
    assert kinds.count("conv2d") == 2 and kinds.count("conv_transpose2d") == 1
    assert kinds.count("matmul") == 3  # einsum, bmm, x @ w
    assert "Linear" in kinds
    assert report.totals()["flops"] == 2 * report.macs
    assert report.other_ops > 0  # relu, softmax, mean are counted separately


def test_functional_op_layers_are_named_after_their_module_and_numbered():
    names = [layer.name for layer in convopt.analyze(FunctionalNet(), torch.randn(1, 3, 8, 8), hardware=None).layers]
    assert names[:3] == ["conv2d", "relu", "conv2d#2"]
    assert "head" in names


def test_functional_layer_params_come_from_parameter_inputs():
    report = convopt.analyze(FunctionalNet(), torch.randn(1, 3, 8, 8), hardware=None)
    first = report.layers[0]
    assert first.kind == "conv2d" and first.params == 8 * 3 * 9
    assert first.conv["groups"] == 1 and first.conv["padding"] == ((1, 1), (1, 1))


def test_leaf_module_called_twice_gets_two_rows():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    report = convopt.analyze(Shared(), torch.randn(1, 4, 6, 6), hardware=None)
    assert [layer.name for layer in report.layers] == ["conv", "conv#2"]
    assert report.params == 4 * 4 * 9 + 4  # shared parameters counted once in the total


def test_default_model_totals_match_flop_counter_and_layers_have_shapes():
    model, x = default_model(), torch.rand(4, 1, 28, 28)
    report = convopt.analyze(model, x, hardware=None)
    assert report.macs == flop_counter_macs(model, x)
    conv = next(layer for layer in report.layers if layer.name == "layer2.conv1")
    assert conv.input_shape == [4, 16, 28, 28] and conv.output_shape == [4, 32, 14, 14]
    assert conv.macs == 4 * 32 * 14 * 14 * 16 * 9
    assert conv.bytes == 4 * (4 * 16 * 784 + 32 * 16 * 9 + 4 * 32 * 196)
    assert conv.arithmetic_intensity == pytest.approx(conv.macs / conv.bytes)
    bn = next(layer for layer in report.layers if layer.name == "layer2.bn1")
    assert bn.macs == 0 and bn.other_ops == 2 * 4 * 32 * 196  # inference BN: scale + shift


def test_views_cost_nothing_and_copies_move_bytes():
    class Moves(nn.Module):
        def forward(self, x):
            return x.view(-1).t().contiguous().clone()

    trace, _ = trace_forward(Moves(), (torch.randn(8),))
    assert [r.op for r in trace.records] == ["clone"]
    assert trace.records[0].bytes_read == trace.records[0].bytes_written == 32


def test_rejected_input_names_the_layer_that_failed():
    with pytest.raises(convopt.InputShapeError, match=r"layer 'layer2.conv1' \(Conv2d\)"):
        model = default_model()
        model.layer2.conv1 = nn.Conv2d(99, 32, 3)  # wrong in_channels inside the model
        convopt.analyze(model, torch.rand(1, 1, 28, 28), hardware=None)
    with pytest.raises(convopt.InputShapeError, match=r"layer 'stem.0'"):
        convopt.analyze(default_model(), torch.rand(1, 3, 28, 28), hardware=None)


def test_hooks_are_removed_after_tracing():
    model = default_model()
    before = (len(nn.modules.module._global_forward_pre_hooks), len(nn.modules.module._global_forward_hooks))
    with pytest.raises(convopt.InputShapeError):
        trace_forward(model, (torch.rand(1, 2, 28, 28),))
    trace_forward(model, (torch.rand(1, 1, 28, 28),))
    after = (len(nn.modules.module._global_forward_pre_hooks), len(nn.modules.module._global_forward_hooks))
    assert before == after


def test_layers_from_trace_keeps_execution_order():
    trace, _ = trace_forward(default_model(), (torch.rand(1, 1, 28, 28),))
    names = [layer.name for layer in layers_from_trace(trace)]
    assert names[0] == "stem.0" and names[-1] == "fc"
    assert names.index("layer1.conv1") < names.index("layer2.conv1") < names.index("layer3.conv1")


def test_exported_program_layers_keep_their_module_names():
    model, x = default_model(), torch.rand(1, 1, 28, 28)
    eager = convopt.analyze(model, x, hardware=None)
    exported = convopt.analyze(torch.export.export(model, (x,)).module(), x, hardware=None)
    assert exported.macs == eager.macs
    convs = lambda report: [(layer.name, layer.kind, layer.macs) for layer in report.layers if layer.macs]  # noqa: E731
    assert convs(exported) == convs(eager)
    assert "layer1.add" in [layer.name for layer in exported.layers]
    assert next(layer for layer in exported.layers if layer.name == "stem.0").params == 9 * 16
