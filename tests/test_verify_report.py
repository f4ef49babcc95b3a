"""verify_models end to end in Python, the profile and Chrome trace, and the self-contained HTML report."""

from __future__ import annotations

import copy
import doctest
import importlib
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convopt.errors import ConvoptError
from convopt.report.verify_html import line_chart, render_verify_html, write_verify_html
from convopt.verify import VerifyConfig, profile_model, verify_models


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 3)).eval()  # fmt: skip


@pytest.fixture(scope="module")
def full_report():
    reference = tiny_cnn()
    candidate = copy.deepcopy(reference)
    with torch.no_grad():
        candidate[0].weight.add_(0.1 * torch.randn_like(candidate[0].weight))
    x = torch.rand(48, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    y = reference(x).argmax(1).detach()
    config = VerifyConfig(max_samples=40, attacks=("fgsm", "pgd"), eps=(0.02, 0.1), pgd_steps=3, attack_samples=20,
                          smoothing_sigma=0.25, smoothing_n0=10, smoothing_n=200, smoothing_samples=4, ibp_eps=0.01,
                          ibp_samples=10, profile=True, profile_repeats=2)  # fmt: skip
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return verify_models(reference, candidate, loader, config, reference_name="ref", candidate_name="cand")


def test_every_part_runs_and_serialises(full_report):
    report = full_report
    assert report.num_samples == 40 and report.accuracy.reference.top1 == 1.0
    assert report.numerics.first_failing == "0" and not report.passed
    assert [c.attack for c in report.attacks["candidate"]] == ["fgsm", "pgd"]
    assert set(report.smoothing) == set(report.ibp) == set(report.profile) == {"reference", "candidate"}
    assert report.ibp["reference"].certified_accuracy <= report.ibp["reference"].clean_accuracy
    text = json.dumps(report.to_dict(), allow_nan=False)  # strict JSON: infinite SQNRs become strings
    data = json.loads(text)
    assert data["config"]["eps"] == [0.02, 0.1] and data["numerics"]["first_failing"] == "0"
    assert data["attacks"]["reference"][1]["points"][0]["eps"] == 0.02


def test_html_report_is_self_contained(full_report, tmp_path):
    page = render_verify_html(full_report)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2 and "<polyline" in page
    assert '<tr class="first">' in page and "First layer out of tolerance: <b>0</b>" in page
    assert "<script" not in page and "src=" not in page and "href=" not in page
    path = write_verify_html(full_report, tmp_path / "out" / "verify.html")
    assert path.read_text() == page and not list(tmp_path.rglob("*.tmp"))


def test_line_chart_places_points_inside_the_plot():
    svg = line_chart({"a": [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]}, "t", "x", "y", width=400, height=300)
    coords = [tuple(map(float, p.split(","))) for p in svg.split('points="')[1].split('"')[0].split()]
    assert coords[0][1] < coords[1][1] < coords[2][1] and coords[0][0] < coords[2][0] <= 400


def test_profile_names_the_bottleneck_and_exports_a_chrome_trace(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 64, 7, padding=3), nn.ReLU(), nn.Conv2d(64, 4, 1)).eval()
    report = profile_model(model, torch.rand(2, 3, 32, 32), repeats=3, warmup=1, trace_path=tmp_path / "t.json")
    names = [layer.name for layer in report.layers]
    assert sorted(names) == ["0", "1", "2"] and report.bottlenecks[0] == "0"  # the 7x7 conv dominates
    assert all(layer.calls == 1 for layer in report.layers) and report.forward_milliseconds > 0
    assert 0.3 < sum(layer.fraction for layer in report.layers) <= 1.05
    trace = json.loads((tmp_path / "t.json").read_text())
    assert any(event.get("name") == "layer::0" for event in trace["traceEvents"])
    assert report.to_dict()["trace_path"] == str(tmp_path / "t.json")


@pytest.mark.parametrize("name", ["convopt.verify.bounds", "convopt.verify.suite"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"attacks": ("cw",)}, "unknown attack"), ({"max_samples": 0}, "max_samples=0"),
    ({"smoothing_sigma": -1.0}, "sigma"), ({"norm": "1"}, "norm '1'"), ({"ibp_eps": -0.1}, "ibp eps"),
])  # fmt: skip
def test_config_validation_names_the_fix(kwargs, message):
    with pytest.raises(ConvoptError, match=message):
        VerifyConfig(**kwargs)
