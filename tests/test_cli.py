"""`convopt analyze` end to end, in-process through cli.main(argv)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from convopt.cli import main
from convopt.models import default_model

LAYER_KEYS = {"name", "kind", "input_shape", "output_shape", "macs", "params", "bytes", "arithmetic_intensity", "bound"}


def run_json(capsys, *argv):
    code = main(["analyze", *argv, "--json", "-"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_default_model_table(capsys):
    assert main(["analyze"]) == 0
    out = capsys.readouterr().out
    for text in ("MnistResNet", "layer2.conv1", "Conv2d", "total:", "bandwidth", "energy:"):
        assert text in out


def test_json_has_the_stable_keys(capsys):
    data = run_json(capsys)
    assert data["input_shape"] == [1, 1, 28, 28]
    assert set(data["totals"]) >= {"macs", "flops", "params", "activation_bytes"}
    assert data["totals"]["flops"] == 2 * data["totals"]["macs"]
    assert data["totals"]["params"] == sum(p.numel() for p in default_model().parameters())
    assert data["layers"] and all(LAYER_KEYS <= set(layer) for layer in data["layers"])
    assert all(layer["bound"] in ("compute", "memory") for layer in data["layers"])
    assert set(data["hardware"]) >= {"peak_gflops", "bandwidth_gbs"} and "fp32" in data["hardware"]["peak_gflops"]
    assert data["energy"]["method"] in ("rapl", "declared-tdp")


def test_json_file_and_plots(tmp_path, capsys):
    out = tmp_path / "sub" / "report.json"
    assert main(["analyze", "--json", str(out), "--plot", str(tmp_path / "roof.png")]) == 0
    assert json.loads(out.read_text())["totals"]["macs"] > 0
    assert (tmp_path / "roof.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["analyze", "--plot", str(tmp_path / "roof.svg")]) == 0
    assert b"<svg" in (tmp_path / "roof.svg").read_bytes()[:500]
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave nothing behind


def test_input_shape_option_and_torchvision_default_shape(capsys):
    assert run_json(capsys, "--input-shape", "8,1,28,28")["input_shape"] == [8, 1, 28, 28]
    data = run_json(capsys, "torchvision:alexnet")
    assert data["input_shape"] == [1, 3, 224, 224]
    assert abs(data["totals"]["macs"] / 1e9 - 0.714) <= 0.0005 + 0.001 * 0.714


def test_measure_on_resnet18_reports_roofline_fraction(capsys):
    data = run_json(capsys, "torchvision:resnet18", "--measure", "--repeats", "2", "--threads", "2")
    convs = [layer for layer in data["layers"] if layer["kind"] == "Conv2d"]
    assert len(convs) == 20
    for conv in convs:  # fraction = measured rate / attainable rate (the value itself depends on the machine)
        assert conv["seconds"] > 0 and conv["roofline_fraction"] > 0
        measured = conv["macs"] / conv["seconds"] / 1e9
        assert conv["roofline_fraction"] == pytest.approx(measured / conv["attainable_gmacs_per_s"])
    assert data["latency_seconds"] > 0 and data["energy"]["latency_source"] == "measured"


def test_model_from_python_file_and_module(tmp_path, capsys):
    source = tmp_path / "mymodel.py"
    source.write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU())\n"
    )
    data = run_json(capsys, f"{source}:build", "--input-shape", "1,2,10")
    assert data["totals"]["macs"] == 4 * 8 * 2 * 3
    data = run_json(capsys, "convopt.models:default_model")
    assert data["input_shape"] == [1, 1, 28, 28]  # from the model's input_shape attribute


def test_torchscript_and_exported_program_files(tmp_path, capsys):
    model, x = default_model(), torch.rand(1, 1, 28, 28)
    expected = run_json(capsys)["totals"]["macs"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, x).save(str(tmp_path / "model.ts"))
    assert run_json(capsys, str(tmp_path / "model.ts"), "--input-shape", "1,1,28,28")["totals"]["macs"] == expected
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "model.pt2"))
    data = run_json(capsys, str(tmp_path / "model.pt2"))
    assert data["input_shape"] == [1, 1, 28, 28] and data["totals"]["macs"] == expected


def error_line(capsys, argv):
    with pytest.raises(SystemExit) if argv and argv[0] == "--bad-flag" else _nothing():
        code = main(argv)
        assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convopt: error:"), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_bad_inputs_give_one_line_and_exit_code_2(tmp_path, capsys):
    assert "did you mean resnet18" in error_line(capsys, ["analyze", "torchvision:resnet19"])
    assert "no such file" in error_line(capsys, ["analyze", str(tmp_path / "missing.pt")])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model")
    assert "not a model convopt can load" in error_line(capsys, ["analyze", str(junk)])
    bad_pt2 = tmp_path / "junk.pt2"
    bad_pt2.write_bytes(b"nope")
    assert "not a torch.export" in error_line(capsys, ["analyze", str(bad_pt2)])
    assert "positive integers" in error_line(capsys, ["analyze", "--input-shape", "1,x,28"])
    assert "positive integer" in error_line(capsys, ["analyze", "--input-shape", "1,0,28,28"])
    rejected = error_line(capsys, ["analyze", "--input-shape", "1,3,28,28"])
    assert "layer 'stem.0' (Conv2d)" in rejected
    notmodel = tmp_path / "factory.py"
    notmodel.write_text("def build():\n    return 42\n")
    assert "not a torch.nn.Module" in error_line(capsys, ["analyze", f"{notmodel}:build"])
    assert "no attribute 'nope'" in error_line(capsys, ["analyze", f"{notmodel}:nope"])
    assert "cannot import module" in error_line(capsys, ["analyze", "no_such_package_xyz:build"])
    assert "name the callable" in error_line(capsys, ["analyze", str(notmodel)])
    assert "not on disk" in error_line(capsys, ["analyze", "torchvision:resnet18", "--pretrained"])
    assert "only applies to torchvision" in error_line(capsys, ["analyze", "--pretrained"])


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--repeats", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "positive integer" in err[0]
