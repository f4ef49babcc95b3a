"""`convopt optimize --prune/--decompose/--distill`: report sections, reload of the changed architecture, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import convopt
from convopt.cli import main
from convopt.data import load_mnist

FAST = ["--no-compare", "--repeats", "1", "--batch", "4", "--threads", "2", "--data", "mnist"]


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convopt: error:"), lines[-5:]
    return lines[0]


def test_decomposed_model_is_reported_saved_and_reloaded(tmp_path):
    out = tmp_path / "out"
    assert main(["optimize", *FAST, "--decompose", "tucker:0.5", "--max-accuracy-drop", "100", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    compression = report["compression"]
    totals = compression["totals"]
    assert totals["after"]["macs"] < 0.75 * totals["before"]["macs"]
    assert [t["stage"] for t in compression["trajectory"]] == ["original", "decomposed"]
    assert report["accuracy"]["before"] == compression["accuracy"]["before"] >= 97.0
    assert "original" in report["backends"] and report["latency_ms"]["before"] == report["backends"]["original"]["ms"]
    assert "compressed first" in report["notes"][0]
    html = (out / "report.html").read_text()
    assert "Tucker" in html or "tucker" in html
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["config"]["steps"][0]["type"] == "StructureConfig"
    model = convopt.load(out)
    x, y = load_mnist("test")
    with torch.no_grad():
        accuracy = 100.0 * float((model(x).argmax(1) == y).double().mean())
    assert accuracy == pytest.approx(report["accuracy"]["after"], abs=0.2)  # the reloaded model is the one judged
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in convopt.models.default_model().parameters())


@pytest.mark.parametrize("argv, message", [
    (["--prune", "structured:1.5"], "strictly between 0 and 1"),
    (["--prune", "fancy:0.5"], "structured:RATIO"),
    (["--decompose", "tucker"], "tucker:MAC_RATIO"),
    (["--distill", "-1"], "--distill -1"),
])  # fmt: skip
def test_bad_compression_flags_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main(["optimize", *FAST, *argv, "--out", str(tmp_path / "o")]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_compression_without_data_is_refused(tmp_path, capsys):
    assert main(["optimize", "--no-compare", "--prune", "2:4", "--out", str(tmp_path / "o")]) == 2
    assert "need --data" in one_error_line(capsys)


def test_unmeetable_budget_writes_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["optimize", *FAST, "--decompose", "tucker:0.1", "--max-accuracy-drop", "0", "--out", str(out)]) == 2
    assert "over the budget" in one_error_line(capsys)
    assert not out.exists()
