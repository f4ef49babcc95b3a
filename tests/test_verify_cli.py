"""`convopt verify` end to end, in-process through cli.main(argv)."""

from __future__ import annotations

import json

import pytest
import torch

from convopt.cli import main

MODELS = '''
import torch
from torch import nn


def build(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def build_copy():
    return build()


def build_perturbed():
    model = build()
    with torch.no_grad():
        model[3].weight.mul_(1.2)
    return model
'''


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "nets.py"
    path.write_text(MODELS)
    return str(path)


def error_line(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convopt: error:"), captured.err
    return lines[0]


def test_every_check_to_json_html_and_trace(models, tmp_path, capsys):
    argv = ["verify", f"{models}:build", f"{models}:build_perturbed", "--data", "digits", "--max-samples", "30",
            "--attacks", "fgsm,pgd", "--eps", "0.05,0.1", "--attack-samples", "12", "--pgd-steps", "3",
            "--smoothing", "0.25", "--smoothing-n0", "10", "--smoothing-n", "100", "--smoothing-samples", "3",
            "--ibp", "0.01", "--ibp-samples", "6", "--profile-repeats", "1", "--trace", str(tmp_path / "trace.json"),
            "--html", str(tmp_path / "report.html"), "--json", "-"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["data"] == "digits" and data["num_samples"] == 30
    assert data["numerics"]["first_failing"] == "3" and data["passed"] is False
    assert [c["attack"] for c in data["attacks"]["candidate"]] == ["fgsm", "pgd"]
    for curve in data["attacks"]["reference"]:
        assert all(p["max_perturbation"] <= p["eps"] + 1e-6 for p in curve["points"])
    assert data["smoothing"]["candidate"]["n"] == 100 and data["ibp"]["reference"]["eps"] == 0.01
    assert data["profile"]["candidate"]["trace_path"] == str(tmp_path / "trace.json")
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert (tmp_path / "trace.reference.json").is_file()
    assert "<svg" in (tmp_path / "report.html").read_text()


def test_tables_and_strict_exit_code(models, tmp_path, capsys):
    data = ["--data", "digits", "--max-samples", "20"]
    assert main(["verify", f"{models}:build", f"{models}:build_copy", *data]) == 0
    out = capsys.readouterr().out
    assert "every layer within tolerance" in out and "top-1" in out and "layer numerics" in out
    assert main(["verify", f"{models}:build", f"{models}:build_perturbed", *data, "--strict"]) == 1
    out = capsys.readouterr().out
    assert "first layer out of tolerance: 3" in out
    target = str(tmp_path / "r.json")
    assert main(["verify", f"{models}:build", f"{models}:build_perturbed", *data, "--json", target]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["numerics"]["first_failing"] == "3"


def test_default_model_against_itself_on_mnist(capsys):
    assert main(["verify", "--max-samples", "16", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True and data["data"] == "mnist" and data["accuracy"]["agreement"] == 1.0


def test_bad_inputs_give_one_line_and_exit_code_2(models, capsys):
    pair = [f"{models}:build", f"{models}:build_copy"]
    assert "unknown data set" in error_line(capsys, ["verify", *pair, "--data", "cifar"])
    assert "name the CANDIDATE" in error_line(capsys, ["verify", f"{models}:build"])
    assert "unknown attack(s) cw" in error_line(capsys, ["verify", *pair, "--attacks", "cw", "--data", "digits"])
    assert "no such file" in error_line(capsys, ["verify", "missing.py:build", f"{models}:build"])
    assert "rejects inputs of shape" in error_line(capsys, ["verify", "torchvision:resnet18", "torchvision:resnet18",
                                                            "--data", "digits", "--max-samples", "2"])  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(["verify", *pair, "--eps", "big"])
    assert info.value.code == 2 and "comma-separated numbers" in capsys.readouterr().err
