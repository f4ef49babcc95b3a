"""Quant points beyond conv/linear layers: "MODULE:OpType" names for ops a module runs itself (a residual add),
excluded from or probed alone on the INT8 engine; prepare-once builds; the entropy observer on ReLU outputs."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convopt.errors import ConfigError
from convopt.kernels.observers import EntropyObserver
from convopt.quantize_flow import op_points
from convopt.transforms.int8_engine import build_int8_model, build_prepared, prepare_int8
from convopt.transforms.onnx_names import nodes_of_modules, op_point, split_op_point


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        return self.conv2(h) + h  # the add belongs to this module itself: "0:Add" inside the Sequential


@pytest.fixture(scope="module")
def prepared():
    torch.manual_seed(0)
    model = nn.Sequential(Residual(), nn.Conv2d(4, 2, 1)).eval()
    return model, prepare_int8(model, torch.randn(16, 4, 8, 8))


def _producers(graph) -> dict[str, str]:
    return {out: node.op_type for node in graph.node for out in node.output}


def test_op_point_names_select_the_ops_a_module_runs_itself(prepared):
    _, prep = prepared
    graph = onnx.load_from_string(prep.pre_onnx).graph
    add = next(n for n in graph.node if n.op_type == "Add")
    assert op_point(add) == "0:Add" and split_op_point("0:Add") == ("0", "Add") and split_op_point("0.conv1") is None
    found = nodes_of_modules(graph, ["0:Add", "0"])
    assert found["0:Add"] == [add.name]
    assert add.name in found["0"] and len(found["0"]) > 1  # the module name still selects its whole subtree
    with pytest.raises(ConfigError, match=r"op point '0:Mul' produced no node.*0:Add"):
        nodes_of_modules(graph, ["0:Mul"])


def test_excluded_add_reads_float_inputs_while_the_convs_stay_int8(prepared):
    _, prep = prepared
    build = build_prepared(prep, exclude={"0:Add": "test"}, engine="onnxruntime", repeats=0)
    precision = {(r["module"], r["op_type"]): r["precision"] for r in build.nodes}
    assert precision[("0", "Add")] == "float" and build.excluded["0:Add"] == "test"
    assert precision[("0.conv1", "Conv")] == precision[("0.conv2", "Conv")] == precision[("1", "Conv")] == "int8"
    graph = onnx.load_from_string(build.onnx_bytes).graph
    add = next(n for n in graph.node if n.op_type == "Add")
    assert all(_producers(graph).get(name) != "DequantizeLinear" for name in add.input)
    full = build_prepared(prep, engine="onnxruntime", repeats=0)
    assert "0:Add" in op_points(full) and not any(p.endswith(":Conv") for p in op_points(full))


def test_probe_quantizes_only_the_named_point(prepared):
    _, prep = prepared
    # The add's inputs are quantized; its output is the input of a float conv, which reads it unrounded (a
    # tensor's quantization belongs to the op reading it), so the add itself runs on dequantized values.
    probe = build_prepared(prep, engine="onnxruntime", repeats=0, only=["0:Add"])
    assert all(r["precision"] == "float" for r in probe.nodes if r["op_type"] == "Conv")
    graph = onnx.load_from_string(probe.onnx_bytes).graph
    add = next(n for n in graph.node if n.op_type == "Add")
    producers = _producers(graph)
    assert all(producers.get(name) == "DequantizeLinear" for name in add.input)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) == 2  # the add's two inputs, nothing else


def test_prepared_build_equals_the_one_call_build_and_names_are_checked(prepared):
    model, prep = prepared
    once = build_int8_model(model, torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
                            exclude={"0.conv2": "x"}, engine="onnxruntime")  # fmt: skip
    again = build_prepared(prepare_int8(model, torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(0))),
                           exclude={"0.conv2": "x"}, engine="onnxruntime")  # fmt: skip
    assert once.onnx_bytes == again.onnx_bytes and once.excluded == again.excluded
    with pytest.raises(ConfigError, match=r"\['nope:Add'\] are not modules.*MODULE:OpType"):
        build_prepared(prep, exclude=frozenset({"nope:Add"}), engine="onnxruntime")
    with pytest.raises(ConfigError, match="repeats"):
        build_prepared(prep, engine="auto", repeats=0)


def test_entropy_observer_keeps_the_tail_of_a_relu_output():
    # Regression: the exact zeros of a ReLU output (a spike in bin 0) made the narrowest clip win; a ReLU6
    # output of MobileNetV2 was clipped at 6 % of its range and the whole model lost all agreement with fp32.
    generator = torch.Generator().manual_seed(3)
    relu = torch.randn(200_000, generator=generator).clamp(min=0)
    values = torch.rand(200_000, generator=generator) * 6
    sparse = torch.where(torch.rand(200_000, generator=generator) < 0.9, 0.0, values)  # 90 % zeros, rest in [0, 6]
    for data, floor in ((relu, 3.0), (sparse, 5.0)):
        observer = EntropyObserver()
        observer.update(data)
        assert floor < observer.threshold() <= float(data.max()) + 1e-6
    empty = EntropyObserver()
    empty.update(torch.zeros(100))
    assert empty.threshold() == 0.0
