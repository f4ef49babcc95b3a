"""The autotuner and its cache: fastest-within-budget choices, reasons for every skip, cache reuse and repair."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from convopt.models import default_model
from convopt.search import autotune
from convopt.search.autotune import tune_model
from convopt.search.cache import TuningCache

FAST = ["direct", "im2col"]  # keeps the test quick; the full candidate set runs in benchmarks and make run


@pytest.fixture
def cache(tmp_path):
    return TuningCache(2, tmp_path / "tuning.json")


def test_choices_are_the_fastest_measured_candidate(cache):
    report = tune_model(default_model(), (torch.rand(2, 1, 28, 28),), threads=2, repeats=2, cache=cache,
                        algorithms=FAST)  # fmt: skip
    assert len(report.layers) == 9  # every conv of the default model
    for layer in report.layers:
        assert set(layer.candidates) == set(FAST)
        assert layer.chosen == min(layer.candidates, key=layer.candidates.get)
        assert layer.candidates[layer.chosen] <= layer.candidates["direct"]  # never slower than direct
    assert report.plan()["layer1.conv1"] in FAST


def test_second_run_is_served_from_the_cache(cache, monkeypatch):
    model, x = default_model(), (torch.rand(2, 1, 28, 28),)
    first = tune_model(model, x, threads=2, repeats=2, cache=cache, algorithms=FAST)
    monkeypatch.setattr(autotune, "interleaved_times", lambda *a, **k: pytest.fail("re-timed a cached layer"))
    second = tune_model(model, x, threads=2, repeats=2, cache=TuningCache(2, cache.path), algorithms=FAST)
    assert second.cache_hits == len(second.layers) == 9
    assert second.plan() == first.plan()


def test_garbage_or_foreign_cache_is_rebuilt_with_a_warning(tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text("garbage{")
    with pytest.warns(RuntimeWarning, match="unusable"):
        cache = TuningCache(2, path)
    report = tune_model(default_model(), (torch.rand(1, 1, 28, 28),), threads=2, repeats=1, cache=cache,
                        algorithms=["direct"])  # fmt: skip
    assert report.cache_rebuilt and json.loads(path.read_text())["entries"]
    data = json.loads(path.read_text())
    data["fingerprint"]["cpu_model"] = "another machine"
    path.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="another machine"):
        assert TuningCache(2, path).entries == {}


def test_candidates_over_the_error_budget_are_skipped_with_the_reason(cache):
    report = tune_model(default_model(), (torch.rand(1, 1, 28, 28),), threads=2, repeats=1, cache=cache,
                        algorithms=FAST, budget_error=1e-15)  # fmt: skip
    for layer in report.layers:
        assert layer.chosen == "direct"
        assert "over the budget" in layer.skipped["im2col"]


def test_unsupported_candidates_and_padding_modes_are_explained(cache):
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.Conv2d(2, 2, 3, stride=2)).eval()
    report = tune_model(model, (torch.rand(1, 2, 12, 12),), threads=1, repeats=1, cache=cache,
                        algorithms=["direct", "winograd_f4"])  # fmt: skip
    reflect, strided = report.layers
    assert reflect.chosen == "direct" and "padding_mode" in reflect.skipped["*"]
    assert strided.chosen == "direct" and "stride" in strided.skipped["winograd_f4"]
