"""Saving an optimized model and loading it back: same outputs, strict weights, atomic folders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import convopt
from convopt.artifacts import RECIPE_FILE, WEIGHTS_FILE, load, save_optimized
from convopt.models import default_model
from test_transforms import with_random_bn_stats

RECIPE = convopt.Compose([convopt.FoldBatchNormConfig(), convopt.AlgorithmConfig("im2col", modules="layer1.*"),
                          convopt.FuseConfig()])  # fmt: skip


def optimized_default():
    model, _ = convopt.apply(with_random_bn_stats(default_model()), RECIPE, example_inputs=torch.rand(1, 1, 28, 28))
    return model


def test_round_trip_gives_the_same_outputs(tmp_path):
    model, x = optimized_default(), torch.rand(3, 1, 28, 28)
    save_optimized(model, tmp_path / "out", source=None, input_shape=[1, 1, 28, 28], config=RECIPE)
    loaded = load(tmp_path / "out")
    assert type(loaded.layer1.conv1).__name__ == "AlgoConv2d" and not loaded.training
    assert type(loaded.layer2.conv1).__name__ == "FusedConv"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_round_trip_in_a_fresh_process(tmp_path):
    model, x = optimized_default(), torch.rand(2, 1, 28, 28)
    save_optimized(model, tmp_path / "out", source=None, input_shape=[1, 1, 28, 28], config=RECIPE)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "expected.pt")
    script = (
        "import torch, convopt, sys\n"
        f"x = torch.load(r'{tmp_path / 'x.pt'}', weights_only=True)\n"
        f"expected = torch.load(r'{tmp_path / 'expected.pt'}', weights_only=True)\n"
        f"model = convopt.load(r'{tmp_path / 'out'}')\n"
        "with torch.no_grad():\n    assert torch.equal(model(x), expected)\n"
        "print('same outputs')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "same outputs" in done.stdout


def test_overwrites_own_output_but_refuses_foreign_folders(tmp_path):
    model = optimized_default()
    out = tmp_path / "out"
    save_optimized(model, out, source=None, input_shape=[1, 1, 28, 28], config=RECIPE)
    save_optimized(model, out, source=None, input_shape=[1, 1, 28, 28], config=RECIPE)  # replacing is fine
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(convopt.ConvoptError, match="not a convopt output folder"):
        save_optimized(model, foreign, source=None, input_shape=[1, 1, 28, 28], config=RECIPE)
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "photos"]  # no staging folders left


def test_failed_write_leaves_nothing_behind(tmp_path):
    def broken_writer(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_optimized(optimized_default(), tmp_path / "out", source=None, input_shape=[1, 1, 28, 28],
                       config=RECIPE, extra_files={"report.json": broken_writer})  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(convopt.ConvoptError, match="cannot write there"):
        save_optimized(optimized_default(), blocker / "out", source=None, input_shape=[1, 1, 28, 28], config=RECIPE)


def test_tampered_or_mismatched_folders_are_refused(tmp_path):
    out = tmp_path / "out"
    save_optimized(optimized_default(), out, source=None, input_shape=[1, 1, 28, 28], config=RECIPE)
    (out / WEIGHTS_FILE).write_bytes((out / WEIGHTS_FILE).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(convopt.ModelLoadError, match="does not match the hash"):
        load(out)
    save_optimized(optimized_default(), out, source="torchvision:alexnet", input_shape=[1, 1, 28, 28],
                   config=convopt.Compose([]))  # fmt: skip
    with pytest.raises(convopt.ModelLoadError, match="does not fit the rebuilt architecture"):
        load(out)
    recipe = json.loads((out / RECIPE_FILE).read_text())
    (out / RECIPE_FILE).write_text(json.dumps({**recipe, "version": 99}))
    with pytest.raises(convopt.ModelLoadError, match="recipe version"):
        load(out)
    with pytest.raises(convopt.ModelLoadError, match="not a convopt output folder"):
        load(tmp_path)
