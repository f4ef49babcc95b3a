"""quantize_model: accuracy budget on the real engine, mixed precision, QAT hand-off and bad calibration data."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from convopt.errors import BudgetExceededError, CalibrationError
from convopt.quantize_flow import quantize_model
from convopt.transforms.onnx_names import node_module


class Spiky(nn.Module):
    """conv1 emits a constant channel of 500 that conv2 and fc ignore: whatever quantizes that tensor
    (conv2's input; with `residual`, also the add) gets a step of ~2 and loses the real signal (~1)."""

    def __init__(self, residual: bool = False):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)
        self.residual = residual
        with torch.no_grad():
            self.conv1.weight[7], self.conv1.bias[7] = 0.0, 500.0
            self.conv2.weight[:, 7] = 0.0
            self.fc.weight.view(4, 8, 8, 8)[:, 7] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(h))
        return self.fc((y + h if self.residual else y).flatten(1))


def _data(model: nn.Module, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs labelled by the float model, kept where its top-2 margin is clear (fp32: 100 %)."""
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model(x)
    top2 = logits.topk(2, dim=1).values
    keep = top2[:, 0] - top2[:, 1] > 0.05 * logits.abs().max()
    return x[keep], logits.argmax(1)[keep]


def _setup(residual: bool) -> tuple[nn.Module, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = Spiky(residual).eval()
    return model, _data(model, 64, 1)[0], _data(model, 400, 2)


def test_mixed_precision_keeps_the_sensitive_layer_in_float_until_the_budget_holds():
    model, calibration, held_out = _setup(residual=False)
    result = quantize_model(model, calibration=calibration, data_eval=held_out, example_inputs=held_out[0][:8],
                            max_accuracy_drop=2.0)  # fmt: skip
    report = result.report
    assert report["accuracy"]["fp32"] == 100.0
    assert report["accuracy"]["int8_all_layers"] < 90  # conv2's input range is ruined by the spike
    assert report["accuracy"]["drop"] <= 2.0
    assert report["mixed_precision"]["excluded"] == ["conv2"] and report["broke_budget_first"] == ["conv2"]
    assert [t["num_excluded"] for t in report["trajectory"]] == [0, 1]
    assert report["sensitivity"][0]["name"] == "conv2" and report["sensitivity"][0]["drop"] > 10
    assert {row["name"]: row["precision"] for row in report["layers"]} == {"conv1": "int8", "conv2": "float",
                                                                         "fc": "int8"}  # fmt: skip
    assert "mixed precision" in report["excluded"]["conv2"]
    graph = onnx.load_from_string(result.build.onnx_bytes)
    conv2 = next(n for n in graph.graph.node if n.op_type == "Conv" and node_module(n) == "conv2")
    producers = {out: n.op_type for n in graph.graph.node for out in n.output}
    assert producers.get(conv2.input[0]) == "Relu"  # its input is float (the folded ReLU re-applied), not DQ
    assert producers.get(conv2.input[1]) is None  # fp32 weight initializer
    assert result.recipe.steps[-1].exclude == ("conv2",)
    with torch.no_grad():
        agree = (result.model(held_out[0]).argmax(1) == held_out[1]).float().mean() * 100
    assert float(agree) == pytest.approx(report["accuracy"]["int8"])


def test_mixed_precision_keeps_a_residual_add_in_float_too():
    # The spike also reaches the add (y + h), which no conv/linear layer owns: keeping conv2 alone in float used
    # to leave the quantized add broken in every assignment. The add is now an op point ranked on the engine.
    model, calibration, held_out = _setup(residual=True)
    result = quantize_model(model, calibration=calibration, data_eval=held_out, example_inputs=held_out[0][:8],
                            max_accuracy_drop=2.0)  # fmt: skip
    report = result.report
    assert report["accuracy"]["int8_all_layers"] < 90 and report["accuracy"]["drop"] <= 2.0
    ops = [row for row in report["sensitivity"] if row["kind"] == "op"]
    assert [row["name"] for row in ops] == [":Add"] and ops[0]["measured_on"] in ("openvino", "onnxruntime")
    assert ops[0]["drop"] > 10  # the add alone quantized ruins the output
    assert ":Add" in report["mixed_precision"]["excluded"] and "conv2" in report["mixed_precision"]["excluded"]
    assert report["always_int8"] in {"conv1", "fc"} and report["always_int8"] not in report["excluded"]
    graph = onnx.load_from_string(result.build.onnx_bytes)
    add = next(n for n in graph.graph.node if n.op_type == "Add")
    producers = {out: n.op_type for n in graph.graph.node for out in n.output}
    assert all(producers.get(name) != "DequantizeLinear" for name in add.input)  # the add reads float inputs
    assert ":Add" in result.recipe.steps[-1].exclude
    with torch.no_grad():
        agree = (result.model(held_out[0]).argmax(1) == held_out[1]).float().mean() * 100
    assert float(agree) == pytest.approx(report["accuracy"]["int8"])


class OneLayer(nn.Module):
    """One conv reading a constant channel of 500 that it ignores: its int8 input step (~2) wipes out the signal
    (~1), and the only layer always stays in int8, so no assignment meets the budget."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 8)
        with torch.no_grad():
            self.conv.weight[:, 3] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x, torch.full_like(x[:, :1], 500.0)], 1)).flatten(1)


def test_unmeetable_budget_raises_with_the_best_achievable_figure():
    torch.manual_seed(0)
    model = OneLayer().eval()
    calibration, held_out = _data(model, 64, 1)[0], _data(model, 400, 2)
    with pytest.raises(BudgetExceededError, match=r"best tried reaches \d+\.?\d* \(drop") as caught:
        quantize_model(model, calibration=calibration, data_eval=held_out, example_inputs=held_out[0][:8],
                       max_accuracy_drop=1.0)  # fmt: skip
    assert 0 < caught.value.best_accuracy < 99
    assert len(caught.value.trajectory) == 1 and caught.value.best_excluded == frozenset()  # only all-int8 allowed


@pytest.mark.parametrize("calibration, message", [
    (torch.rand(16, 3, 9, 9), r"got shape \[16, 3, 9, 9\], expected \(N, 3, 8, 8\)"),
    (torch.rand(0, 3, 8, 8), "empty"),
    ([], "empty"),
])  # fmt: skip
def test_bad_calibration_data_fails_before_any_work(calibration, message):
    model = Spiky().eval()
    with pytest.raises(CalibrationError, match=message):
        quantize_model(model, calibration=calibration, data_eval=None, example_inputs=torch.rand(2, 3, 8, 8))


@pytest.mark.slow
def test_qat_checkpoint_in_the_cache_dir_resumes(tmp_path):
    model, calibration, held_out = _setup(residual=False)
    train = _data(model, 256, 3)
    kwargs = dict(calibration=calibration, data_eval=held_out, example_inputs=held_out[0][:8], qat_epochs=1,
                  train_data=train, max_accuracy_drop=100.0, checkpoint_dir=tmp_path)  # fmt: skip
    first = quantize_model(model, **kwargs)
    assert (tmp_path / "qat.ckpt").is_file() and not first.report["qat"]["resumed"]
    assert len(first.report["qat"]["history"]["epochs"]) == 1
    tuned = first.model.float_model.conv1.weight
    assert not torch.equal(tuned, model.conv1.weight)  # the weights were fine-tuned
    again = quantize_model(model, **kwargs)  # the finished checkpoint is picked up, not retrained
    assert again.report["qat"]["resumed"]
    assert torch.equal(again.model.float_model.conv1.weight, tuned)


def test_optimize_with_quantize_compares_engines_with_eager_and_says_when_slower():
    from convopt.optimize import optimize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1)).eval()  # so small that a runtime call costs more than the conv
    x = torch.rand(1, 1, 4, 4)
    result = optimize(model, x, compare_backends=False, repeats=5,
                      quantize={"calibration": torch.rand(8, 1, 4, 4)})  # fmt: skip
    report = result.report
    assert {"eager", "int8 (openvino)", "int8 (onnxruntime)"} == set(report.backends)
    assert report.chosen_backend == min(["int8 (openvino)", "int8 (onnxruntime)"], key=lambda k: report.backends[k]["ms"])
    assert result.model.engine in report.chosen_backend and report.quantization["layers"][0]["name"] == "0"
    slower = report.backends[report.chosen_backend]["ms"] > report.backends["eager"]["ms"]
    assert slower == any("slower than eager fp32" in note for note in report.notes)
    assert result.recipe.steps[-1].engine == result.model.engine


def test_engine_choice_is_the_fastest_engine_within_the_budget():
    from convopt.quantize_flow import pick_engine
    from convopt.transforms.int8_engine import Int8Build, Int8Module

    def build() -> Int8Build:  # the engines are never run here: only the choice between them is tested
        return Int8Build(Int8Module(nn.Linear(2, 2), b"", "openvino"), "openvino",
                         {"openvino": 1.0, "onnxruntime": 2.0}, {}, b"")  # fmt: skip

    both, notes = build(), []
    assert pick_engine(both, {"openvino": 99.0, "onnxruntime": 99.4}, 99.5, 1.0, notes) == 99.0
    assert both.engine == "openvino" and not notes  # both within the budget: the faster one
    slower_but_within, notes = build(), []
    assert pick_engine(slower_but_within, {"openvino": 97.0, "onnxruntime": 99.0}, 99.5, 1.0, notes) == 99.0
    assert slower_but_within.engine == slower_but_within.module.engine == "onnxruntime" and "was faster" in notes[0]
    neither = build()
    assert pick_engine(neither, {"openvino": 90.0, "onnxruntime": 95.0}, 99.5, 1.0, []) == 95.0  # the most accurate
    unmeasured = build()
    assert pick_engine(unmeasured, {"openvino": None, "onnxruntime": None}, None, 1.0, []) is None
    assert unmeasured.engine == "openvino"
