"""The INT8 engine (QDQ ONNX on OpenVINO / ONNX Runtime) against convopt's integer oracle and fp32."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from convopt.errors import CalibrationError, ConfigError
from convopt.kernels.int8 import QuantizedConvWeight, int8_conv_reference
from convopt.kernels.quantize import QuantScheme, dequantize, quantize
from convopt.spec import ConvSpec
from convopt.testing import SQNR_FLOOR_DB, sqnr_db
from convopt.transforms.int8_engine import ENGINES, Int8Module, build_int8_model
from convopt.transforms.onnx_names import node_module

UINT8 = QuantScheme(signed=False, symmetric=False)  # the engine's activations


class ThreeKinds(nn.Module):
    """Three single-conv graphs side by side: conv, conv + ReLU, conv + residual add."""

    def __init__(self):
        super().__init__()
        self.plain, self.relu, self.add = (nn.Conv2d(8, 8, 3, padding=1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.plain(x), torch.relu(self.relu(x)), self.add(x) + x


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _qdq_conv(model: onnx.ModelProto, module: str) -> dict[str, object]:
    """The integer parameters of the Conv that `module` produced, read back from the QDQ graph's initializers."""
    values = _initializers(model)
    producers = {out: n for n in model.graph.node for out in n.output}
    users = {i: n for n in model.graph.node for i in n.input}
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and node_module(n) == module)
    x_dq, w_dq, b_dq = (producers[name] for name in conv.input)
    assert {x_dq.op_type, w_dq.op_type, b_dq.op_type} == {"DequantizeLinear"}  # the conv runs in int8
    out_q = users.get(conv.output[0])
    return {
        "x": (float(values[x_dq.input[1]]), int(values[x_dq.input[2]])),
        "w": (values[w_dq.input[0]], values[w_dq.input[1]], values[w_dq.input[2]]),
        "b": values[b_dq.input[0]].astype(np.float64) * values[b_dq.input[1]].astype(np.float64),
        "out": (float(values[out_q.input[1]]), int(values[out_q.input[2]])) if out_q is not None else None,
        "conv": conv,
    }


def _oracle_conv(params: dict, x: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """The conv's output codes from convopt's float64 integer oracle, with the graph's scales and zero points."""
    x_scale, x_zero = params["x"]
    codes, w_scale, w_zero = params["w"]
    assert not np.any(w_zero) and np.abs(codes).max() <= 127  # symmetric int8, narrow range
    x_q = quantize(x, torch.tensor(x_scale), torch.tensor(x_zero), UINT8)
    codes = torch.from_numpy(codes.copy())
    columns = codes.reshape(1, spec.out_channels, -1).transpose(1, 2).contiguous()
    weight = QuantizedConvWeight(columns, torch.from_numpy(w_scale).float(), columns.to(torch.int32).sum(dim=1))
    out_scale, out_zero = params["out"]
    return int8_conv_reference(x_q, x_scale, x_zero, weight, torch.from_numpy(params["b"]), spec, out_scale,
                               out_zero, UINT8)  # fmt: skip


def _real(codes: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    return dequantize(codes, torch.tensor(scale), torch.tensor(zero), UINT8).double()


@pytest.fixture(scope="module")
def oracle_build() -> tuple[nn.Module, object]:
    """Every output quantized too (float_output=False), so each has an output scale to count LSBs in."""
    torch.manual_seed(0)
    model = ThreeKinds().eval()
    return model, build_int8_model(model, torch.randn(16, 8, 10, 10) * 2 + 0.5, engine="onnxruntime",
                                   float_output=False)  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_matches_integer_oracle_within_one_lsb(oracle_build, engine):
    model, build = oracle_build
    graph = onnx.load_from_string(build.onnx_bytes)
    values = _initializers(graph)
    x = torch.randn(4, 8, 10, 10, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    expected = {}
    for kind in ("plain", "relu", "add"):
        params = _qdq_conv(graph, kind)
        scale, zero = params["out"]
        codes = _oracle_conv(params, x, ConvSpec.from_module(getattr(model, kind)))
        if kind == "relu":
            assert zero == 0  # ReLU is the clamp at the zero point of a [0, max] range
        if kind == "add":  # DQ(conv) + DQ(input) -> Q at the Add's output scale
            add = next(n for n in graph.graph.node if n.op_type == "Add")
            out_q = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == add.output[0])
            x_scale, x_zero = params["x"]
            total = _real(codes, scale, zero) + _real(quantize(x, torch.tensor(x_scale), torch.tensor(x_zero), UINT8),
                                                      x_scale, x_zero)  # fmt: skip
            scale, zero = float(values[out_q.input[1]]), int(values[out_q.input[2]])
            codes = quantize(total.float(), torch.tensor(scale), torch.tensor(zero), UINT8)
        expected[kind] = (_real(codes, scale, zero), scale)
    engine_module = Int8Module(build.module.float_model, build.onnx_bytes, engine).eval()
    with torch.no_grad():
        outputs, references = engine_module(x), model(x)
    for (kind, (want, lsb)), got, reference in zip(expected.items(), outputs, references):
        worst = float((got.double() - want).abs().max()) / lsb
        assert worst <= 1.0 + 1e-4, f"{engine} {kind}: {worst:.3f} LSB from the integer oracle"
        assert sqnr_db(reference, got) >= SQNR_FLOOR_DB["int8_layer"], kind


@pytest.fixture(scope="module")
def auto_build() -> tuple[nn.Module, object]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)).eval()
    return model, build_int8_model(model, torch.randn(16, 8, 10, 10), engine="auto")  # output stays float


def test_auto_engine_is_the_faster_measured_and_the_output_is_the_unrounded_accumulator(auto_build):
    model, build = auto_build
    assert set(build.engine_times_ms) == set(ENGINES) and not build.unavailable
    assert build.engine == min(build.engine_times_ms, key=build.engine_times_ms.get)
    graph = onnx.load_from_string(build.onnx_bytes)
    params = _qdq_conv(graph, "0")
    assert params["out"] is None and graph.graph.output[0].name == params["conv"].output[0]
    x = torch.randn(2, 8, 10, 10)
    x_scale, x_zero = params["x"]
    x_q = quantize(x, torch.tensor(x_scale), torch.tensor(x_zero), UINT8).double() - x_zero
    codes, w_scale, _ = params["w"]
    real_w = torch.from_numpy(codes.copy()).double() * torch.from_numpy(w_scale).double().reshape(-1, 1, 1, 1)
    expected = torch.nn.functional.conv2d(x_q * x_scale, real_w, torch.from_numpy(params["b"]), padding=1)
    for engine in ENGINES:
        with torch.no_grad():
            got = Int8Module(model, build.onnx_bytes, engine).eval()(x).double()
        assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max()), engine


def test_excluded_layer_and_op_without_int8_kernel_stay_float_and_are_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(),
                          nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()  # fmt: skip
    build = build_int8_model(model, torch.rand(8, 3, 12, 12), exclude={"4": "most sensitive"}, engine="onnxruntime")
    graph = onnx.load_from_string(build.onnx_bytes)
    float_weights = {i.name for i in graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert [n.input[1] in float_weights for n in convs] == [False, False, True, False]  # only "4" keeps fp32
    assert build.excluded["4"] == "most sensitive"
    assert "Tanh" in build.excluded["3"] and "no int8 pattern" in build.excluded["3"]
    precision = {r["module"]: r["precision"] for r in build.nodes}
    assert precision == {"0": "int8", "2": "int8", "3": "float", "4": "float", "5": "float", "6": "int8"}
    assert "neighbours run in float" in build.excluded["5"]  # the ReLU of the excluded conv is named too


def test_unknown_excluded_module_is_an_error_naming_the_known_ones():
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(ConfigError, match=r"\['nope'\] are not modules.*layers: 0"):
        build_int8_model(model, torch.rand(4, 3, 8, 8), exclude=frozenset({"nope"}), engine="onnxruntime")


@pytest.mark.parametrize("calibration, message", [
    (torch.rand(8, 3, 16, 16), r"got shape \[8, 3, 16, 16\].*expected \(N, 1, 28, 28\)"),
    ([torch.rand(4, 1, 28, 28), torch.rand(4, 1, 20, 20)], r"batch 1: got shape \[4, 1, 20, 20\], expected \(N, 1, 28, 28\)"),
    (torch.rand(0, 1, 28, 28), "empty"),
    ([], "empty"),
])  # fmt: skip
def test_bad_calibration_data_is_a_calibration_error(calibration, message):
    from convopt.models import default_model

    with pytest.raises(CalibrationError, match=message):
        build_int8_model(default_model(), calibration, input_shape=(1, 1, 28, 28) if message != "empty" else None)


def test_model_rejecting_the_calibration_shape_names_it():
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(CalibrationError, match=r"rejects calibration batches of shape \[2, 5, 8, 8\]"):
        build_int8_model(model, torch.rand(2, 5, 8, 8))


def test_module_pickles_copies_and_trains_through_the_float_model(auto_build):
    _, build = auto_build
    x = torch.rand(3, 8, 10, 10)
    with torch.no_grad():
        expected = build.module(x)
    for clone in (pickle.loads(pickle.dumps(build.module)), copy.deepcopy(build.module)):
        assert isinstance(clone, Int8Module) and clone.engine == build.engine
        with torch.no_grad():
            assert torch.equal(clone(x), expected)
    with torch.no_grad():
        assert not torch.equal(build.module.float_model(x), expected)  # the engine really quantizes
    trained = copy.deepcopy(build.module).train()
    assert trained(x).requires_grad  # training mode: the float model, with gradients


@pytest.mark.slow
@pytest.mark.parametrize("name, shape, excluded", [
    ("default", (8, 1, 28, 28), "layer2.conv1"),
    ("resnet18", (4, 3, 64, 64), "layer3.0.conv2"),
    ("mobilenet_v2", (4, 3, 64, 64), "features.4.conv.1.0"),  # a depthwise conv
])  # fmt: skip
def test_real_architectures_build_on_both_engines_with_an_excluded_layer(name, shape, excluded):
    import torchvision

    from convopt.models import default_model

    torch.manual_seed(0)
    model = default_model() if name == "default" else getattr(torchvision.models, name)().eval()
    sample = torch.rand if name == "default" else torch.randn
    build = build_int8_model(model, [sample(shape), sample(shape)], exclude={excluded: "kept for the test"})
    assert set(build.engine_times_ms) == set(ENGINES) and not build.unavailable
    assert build.engine == min(build.engine_times_ms, key=build.engine_times_ms.get)
    assert build.excluded[excluded] == "kept for the test"
    graph = onnx.load_from_string(build.onnx_bytes)
    producers = {out: n.op_type for n in graph.graph.node for out in n.output}
    convs = {node_module(n): n for n in graph.graph.node if n.op_type == "Conv"}
    assert producers.get(convs[excluded].input[1]) is None  # fp32 weights, straight from an initializer
    assert producers.get(convs[excluded].input[0]) != "DequantizeLinear"  # and a float input
    precision = {r["node"]: r["precision"] for r in build.nodes if r["op_type"] == "Conv"}
    assert [m for m, n in convs.items() if precision[n.name] == "float"] == [excluded]  # every other conv: int8
    x = sample(shape)
    for engine in ENGINES:
        with torch.no_grad():
            got = Int8Module(build.module.float_model, build.onnx_bytes, engine).eval()(x)
            assert sqnr_db(model(x), got) >= SQNR_FLOOR_DB["int8_model"], engine


def test_int8_config_applies_through_the_transform_pipeline_and_round_trips():
    from convopt.transforms import Compose, FoldBatchNormConfig, Int8Config, config_from_json, config_to_json
    from convopt.transforms.pipeline import apply

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    recipe = Compose([FoldBatchNormConfig(), Int8Config(engine="onnxruntime", exclude=("3",), calibration_batches=2)])
    assert config_from_json(config_to_json(recipe)) == recipe
    calibration = [torch.rand(4, 3, 8, 8) for _ in range(5)]
    quantized, report = apply(model, recipe, calibration=calibration)
    assert isinstance(quantized, Int8Module) and quantized.engine == "onnxruntime"
    step = report.steps[-1]
    assert "8 calibration samples" in step.changed["*"]  # 2 batches of 4 used, not 5
    assert step.skipped["3"] == "excluded by the caller"
    with pytest.raises(ConfigError, match="needs calibration data"):
        apply(model, Int8Config())
    for bad in (dict(engine="tensorrt"), dict(observer="max"), dict(exclude="3"), dict(calibration_batches=0)):
        with pytest.raises(ConfigError):
            Int8Config(**bad)
