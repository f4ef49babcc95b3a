"""`convopt optimize --quantize int8` end to end, in-process through cli.main(argv), and convopt.load of the result."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

import convopt
from convopt.cli import main
from convopt.data import load_data
from convopt.transforms.int8_engine import Int8Module


@pytest.fixture(scope="module")
def int8_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "out"
    code = main(["optimize", "--data", "mnist", "--quantize", "int8", "--calibration", "256", "--batch", "32",
                 "--threads", "2", "--repeats", "5", "--no-compare", "--out", str(out)])  # fmt: skip
    assert code == 0
    return out


def test_default_model_int8_within_half_a_point_with_the_layer_table(int8_out):
    report = json.loads((int8_out / "report.json").read_text())
    quant = report["quantization"]
    assert report["accuracy"]["before"] - report["accuracy"]["after"] <= 0.5
    assert quant["accuracy"]["fp32"] == report["accuracy"]["before"] and quant["calibration_samples"] == 256
    names = [row["name"] for row in quant["layers"]]
    assert names[0] == "stem.0" and names[-1] == "fc" and len(names) == 10  # every conv and the linear head
    assert all(row["weight_sqnr_db"] >= 30 and row["output_sqnr_db"] > 20 for row in quant["layers"])
    assert "pool" in quant["excluded"] and "ReduceMean" in quant["excluded"]["pool"]  # named, not hidden
    table = report["backends"]
    assert {"eager", "int8 (openvino)", "int8 (onnxruntime)"} <= set(table)
    int8 = [k for k in table if k.startswith("int8")]
    assert report["chosen_backend"] == min(int8, key=lambda k: table[k]["ms"])
    assert any(report["chosen_backend"].split("(")[1].rstrip(")") in note for note in report["notes"])
    assert (int8_out / "model.int8.onnx").is_file() and "INT8 quantization" in (int8_out / "report.html").read_text()


def test_load_returns_the_int8_engine_with_the_same_predictions(int8_out):
    report = json.loads((int8_out / "report.json").read_text())
    model = convopt.load(int8_out)
    assert isinstance(model, Int8Module) and model.engine == report["quantization"]["engine"]
    x, y = load_data("mnist")
    with torch.no_grad():
        predictions = model(x).argmax(1)
        float_predictions = model.float_model(x).argmax(1)
    assert 100.0 * float((predictions == y).float().mean()) == pytest.approx(report["accuracy"]["after"])
    assert not torch.equal(model(x[:8]), model.float_model(x[:8]))  # it runs the engine, not the float copy
    assert float((predictions == float_predictions).float().mean()) >= 0.99


def test_tampered_engine_graph_is_refused(int8_out, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(int8_out, copy)
    (copy / "model.int8.onnx").write_bytes((copy / "model.int8.onnx").read_bytes() + b"\0")
    with pytest.raises(convopt.ModelLoadError, match="does not match the hash"):
        convopt.load(copy)


def test_quantize_without_data_is_a_clear_error(tmp_path, capsys):
    assert main(["optimize", "--quantize", "int8", "--out", str(tmp_path / "o")]) == 2
    assert "--quantize int8 needs --data" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


BROKEN = """
import torch
from torch import nn
from convopt.data import load_data

class Spiked(nn.Module):
    '''One linear layer (least squares on the training digits) that also reads a constant 500 it ignores: exact
    in fp32, but its int8 input step (~2) wipes out the digit (values in [0, 1]), and the only layer always
    stays in int8, so no precision assignment meets the budget.'''

    input_shape = (1, 1, 28, 28)

    def __init__(self):
        super().__init__()
        x, y = load_data("digits:train", input_shape=self.input_shape)
        features = torch.cat([x.flatten(1), torch.ones(len(x), 1)], 1)
        solution = torch.linalg.lstsq(features, nn.functional.one_hot(y, 10).float()).solution  # (785, 10)
        self.fc = nn.Linear(785, 10)
        with torch.no_grad():
            self.fc.weight.copy_(torch.cat([solution[:784].T, torch.zeros(10, 1)], 1))
            self.fc.bias.copy_(solution[784])

    def forward(self, x):
        flat = x.flatten(1)
        return self.fc(torch.cat([flat, torch.full_like(flat[:, :1], 500.0)], 1))

def build():
    return Spiked().eval()
"""


@pytest.mark.slow
def test_unmeetable_budget_exits_with_the_best_figure_and_writes_nothing(tmp_path, capsys):
    source = tmp_path / "broken.py"
    source.write_text(textwrap.dedent(BROKEN))
    out = tmp_path / "out"
    code = main(["optimize", f"{source}:build", "--data", "digits", "--quantize", "int8", "--calibration", "64",
                 "--max-accuracy-drop", "1", "--no-compare", "--repeats", "5", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no precision assignment meets the accuracy budget" in err and "best tried reaches" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # no folder, no staging left behind


@pytest.mark.slow
def test_qat_flag_fine_tunes_with_a_checkpoint_in_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVOPT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["optimize", "--data", "digits", "--quantize", "int8", "--calibration", "64", "--qat", "1", "--no-compare",
            "--repeats", "5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    qat = json.loads((out / "report.json").read_text())["quantization"]["qat"]
    assert len(qat["history"]["epochs"]) == 1 and not qat["resumed"]
    checkpoints = list((tmp_path / "cache" / "qat").glob("*/qat.ckpt"))
    assert len(checkpoints) == 1 and qat["config"]["checkpoint"] == str(checkpoints[0])
