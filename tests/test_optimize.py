"""`convopt optimize` end to end: the output folder, the report, the cache, and bad input."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess

import pytest
import torch

import convopt
from convopt.cli import main
from convopt.models import default_model

FAST = ["--no-compare", "--repeats", "1", "--batch", "4", "--threads", "2"]


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convopt: error:"), captured.err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("opt") / "out"
    assert main(["optimize", "--data", "mnist", "--out", str(out), *FAST]) == 0
    return out


def test_output_folder_and_report_keys(default_run):
    names = {p.name for p in default_run.iterdir()}
    assert {"model.safetensors", "recipe.json", "report.json", "report.html", "model.onnx"} <= names
    report = json.loads((default_run / "report.json").read_text())
    assert report["accuracy"]["before"] >= 97.0 and report["accuracy"]["after"] == pytest.approx(
        report["accuracy"]["before"], abs=0.2)
    assert set(report["latency_ms"]) >= {"batch", "before", "after"} and report["latency_ms"]["batch"] == 4
    assert report["max_rel_error"] < 1e-4
    assert set(report["size_bytes"]) == {"before", "after"}
    numerics = report["numerics"]  # the verify numerics section, embedded
    assert numerics["first_failing"] is None and len(numerics["layers"]) >= 9
    assert all(layer["sqnr_db"] > 80 for layer in numerics["layers"])
    assert len(report["layers"]) == 9
    for layer in report["layers"]:
        assert layer["algorithm"] in layer["candidates"] and "direct" in layer["candidates"]
        assert layer["candidates"][layer["algorithm"]] <= layer["candidates"]["direct"]


def test_load_round_trip_matches_the_report(default_run):
    model = convopt.load(default_run)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), default_model()(x), rtol=1e-4, atol=1e-4)


def test_second_run_is_served_from_the_tuning_cache(default_run, tmp_path):
    assert main(["optimize", "--out", str(tmp_path / "again"), *FAST]) == 0
    report = json.loads((tmp_path / "again" / "report.json").read_text())
    assert report["tuning"]["cache_hits"] == len(report["layers"]) == 9


def test_report_html_renders_in_headless_chromium(default_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed: `make setup` installs it (Debian package 'chromium')")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    page = (default_run / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page],
                   capture_output=True, timeout=120, check=False)  # fmt: skip
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    for chart in ("chart-backends", "chart-layers", "chart-roofline"):
        assert f'id="{chart}"' in dom and "<svg" in dom.split(f'id="{chart}"')[1][:2000]


def test_comparison_with_torch_compile_and_onnxruntime(tmp_path, capsys):
    code = main(["optimize", "--out", str(tmp_path / "out"), "--repeats", "2", "--batch", "4", "--threads", "2",
                 "--json", "-"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    backends = report["backends"]
    assert {"eager", "convopt", "torch.compile", "onnxruntime"} <= set(backends)
    timed = {name: entry["ms"] for name, entry in backends.items() if entry["ms"]}
    assert report["fastest"] == min(timed, key=timed.get)  # the report names the real winner
    recipe = json.loads((tmp_path / "out" / "recipe.json").read_text())
    if report["fastest"] in ("torch.compile", "onnxruntime"):  # deployed through the winner, and said so
        assert report["chosen_backend"] == report["fastest"]
        backend = {"torch.compile": "inductor", "onnxruntime": "onnxruntime"}[report["fastest"]]
        assert recipe["config"]["steps"][-1] == {"type": "BackendConfig", "modules": "*", "backend": backend}
        assert any("runs through it" in note for note in report["notes"])
        x = torch.rand(4, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(convopt.load(tmp_path / "out")(x), default_model()(x), rtol=1e-4, atol=1e-4)
    else:
        assert report["chosen_backend"] == "convopt"


def test_untraceable_model_is_a_clear_error(tmp_path, capsys):
    source = tmp_path / "branchy.py"
    source.write_text(
        "import torch, torch.nn as nn\n"
        "class Gate(nn.Module):\n"
        "    def forward(self, x):\n        return x if x.sum() > 0 else -x\n"
        "class Net(nn.Module):\n"
        "    input_shape = (1, 1, 8, 8)\n"
        "    def __init__(self):\n        super().__init__(); self.conv = nn.Conv2d(1, 2, 3); self.gate = Gate()\n"
        "    def forward(self, x):\n        return self.gate(self.conv(x))\n"
        "def build():\n    return Net()\n"
    )
    assert main(["optimize", f"{source}:build", "--out", str(tmp_path / "out"), *FAST]) == 2
    assert "module 'gate'" in one_error_line(capsys) and not (tmp_path / "out").exists()
    assert main(["optimize", f"{source}:build", "--out", str(tmp_path / "out"), "--no-graph-passes", *FAST]) == 0


def test_bad_inputs_exit_2_and_leave_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["optimize", "--input-shape", "1,3,28,28", "--out", str(out), *FAST]) == 2
    assert "layer 'stem.0'" in one_error_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["optimize", "--out", str(blocker / "out"), *FAST]) == 2
    assert "cannot write there" in one_error_line(capsys)
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(3, 3)}, str(wrong))
    assert main(["optimize", "--weights", str(wrong), "--out", str(out), *FAST]) == 2
    assert "does not fit the architecture" in one_error_line(capsys)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"stem.0.weight": Evil()}))
    assert main(["optimize", "--weights", str(evil), "--out", str(out), *FAST]) == 2
    assert "refused" in one_error_line(capsys) and not marker.exists()
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt", "file", "wrong.safetensors"]


def test_garbage_tuning_cache_is_rebuilt_with_a_warning(tmp_path, capsys):
    from convopt.search.cache import TuningCache

    path = TuningCache(2).path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not json at all")
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert main(["optimize", "--out", str(tmp_path / "out"), *FAST]) == 0
    assert json.loads(path.read_text())["entries"]


def test_never_hands_back_something_slower_than_eager(monkeypatch):
    from convopt import optimize as optimize_module

    def convopt_always_slower(runs, **kwargs):
        from convopt.timing import Timing

        return {name: Timing(2.0 if name == "convopt" else 1.0, [1.0]) for name in runs}

    monkeypatch.setattr(optimize_module, "interleaved_times", convopt_always_slower)
    result = optimize_module.optimize(default_model(), torch.rand(2, 1, 28, 28), repeats=1, compare_backends=False)
    assert result.report.chosen_backend == "eager" and result.recipe.steps == ()
    assert any("slower than eager" in note for note in result.report.notes)
