"""Mixed precision: shortest float prefix of the sensitivity ranking that meets the budget; sensitivity ranking."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from torch import nn

from convopt.errors import BudgetExceededError, ConfigError
from convopt.transforms.mixed_precision import budget_breakers, choose_precision
from convopt.transforms.quant_sim import calibrate, prepare_quant_sim, sensitivity, single_layer_factory

BASELINE = 90.0


pytestmark = pytest.mark.usefixtures("one_thread")


def _fake_engine(penalties: dict[str, float], floor: float = 0.0):
    """Accuracy = baseline - floor - the penalties of the layers still quantized; records every call."""
    calls: list[frozenset[str]] = []

    def build_and_evaluate(excluded: frozenset[str]) -> float:
        calls.append(excluded)
        return BASELINE - floor - sum(p for name, p in penalties.items() if name not in excluded)

    return build_and_evaluate, calls


def _shortest_prefix(ranking: list[str], penalties: dict[str, float], max_drop: float) -> int:
    """The oracle: scan every prefix length."""
    for k in range(len(ranking) + 1):
        if sum(penalties[n] for n in ranking[k:]) <= max_drop:
            return k
    raise AssertionError("no prefix meets the budget")


@pytest.mark.parametrize("layers", [5, 8, 30])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_choose_precision_finds_the_shortest_prefix(layers, seed):
    rng = random.Random(seed)
    penalties = {f"layer{i}": rng.choice([0.0, 0.05, 0.3, 1.5, 4.0]) for i in range(layers)}
    ranking = sorted(penalties, key=lambda n: -penalties[n])
    max_drop = rng.choice([0.1, 0.5, 1.0])
    build, calls = _fake_engine(penalties)
    progress = []
    result = choose_precision(ranking, build, BASELINE, max_drop, progress=lambda *args: progress.append(args))
    k = _shortest_prefix(ranking, penalties, max_drop)
    assert result.excluded == frozenset(ranking[:k])
    assert result.accuracy == pytest.approx(BASELINE - sum(penalties[n] for n in ranking[k:]))
    assert BASELINE - result.accuracy <= max_drop
    # the trajectory records every configuration tried, in order, and agrees with the calls made
    assert [set(t["excluded"]) for t in result.trajectory] == [set(c) for c in calls]
    assert [t["step"] for t in result.trajectory] == list(range(len(calls)))
    assert result.trajectory[-1]["meets_budget"] or any(t["meets_budget"] for t in result.trajectory)
    assert all(t["drop"] == pytest.approx(BASELINE - t["accuracy"]) for t in result.trajectory)
    assert [p[0] for p in progress] == list(range(1, len(calls) + 1)) and all(d <= t for d, t in progress)
    if layers > 8:  # bisection: logarithmic in the number of layers
        assert len(calls) <= 2 + math.ceil(math.log2(layers))
    else:  # one at a time, most sensitive first
        assert [len(c) for c in calls] == list(range(k + 1))
    assert result.to_dict()["excluded"] == sorted(ranking[:k])


def test_nothing_kept_in_float_when_int8_meets_the_budget():
    build, calls = _fake_engine({"a": 0.1, "b": 0.2})
    result = choose_precision(["b", "a"], build, BASELINE, 0.5)
    assert result.excluded == frozenset() and len(calls) == 1 and result.trajectory[0]["meets_budget"]


@pytest.mark.parametrize("layers", [3, 12])
def test_impossible_budget_raises_with_the_best_achievable_figure(layers):
    penalties = {f"l{i}": 0.5 for i in range(layers)}
    build, calls = _fake_engine(penalties, floor=2.0)  # 2 points lost even with every ranked layer in float
    with pytest.raises(BudgetExceededError) as info:
        choose_precision(list(penalties), build, BASELINE, 1.0)
    error = info.value
    best = BASELINE - 2.0
    assert error.best_accuracy == pytest.approx(best) and error.best_excluded == frozenset(penalties)
    assert "88" in str(error) and "drop 2" in str(error) and "budget 1" in str(error)
    assert len(error.trajectory) == len(calls) and not any(t["meets_budget"] for t in error.trajectory)


def test_nan_accuracy_never_meets_the_budget():
    with pytest.raises(BudgetExceededError):
        choose_precision(["a"], lambda excluded: float("nan"), BASELINE, 1.0)


def test_invalid_arguments():
    build, _ = _fake_engine({"a": 1.0})
    with pytest.raises(ConfigError, match="max_drop"):
        choose_precision(["a"], build, BASELINE, -0.1)
    with pytest.raises(ConfigError, match="twice"):
        choose_precision(["a", "a"], build, BASELINE, 1.0)


def test_budget_breakers():
    rows = [{"name": "x", "drop": 3.0}, {"name": "y", "drop": 0.4}, {"name": "z", "drop": 0.1}]
    assert budget_breakers(rows, frozenset(), 1.0) == ["x"]
    assert budget_breakers(rows, {"z", "y"}, 5.0) == ["y", "z"]  # together, in ranking order


def _fragile_model() -> tuple[nn.Module, nn.Module]:
    """A small CNN and a copy computing the same function, in which conv "2" gets a huge input range:
    ReLU is positively homogeneous, so scaling conv 0's channel 0 by 1000 and conv 2's matching input
    weights by 1/1000 changes nothing in float, but conv 2's per-tensor uint8 input loses its resolution."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    ).eval()  # fmt: skip
    fragile = copy.deepcopy(model)
    with torch.no_grad():
        fragile[0].weight[0] *= 1000.0
        fragile[0].bias[0] *= 1000.0
        fragile[2].weight[:, 0] /= 1000.0
    return model, fragile


def test_sensitivity_ranks_the_fragile_layer_first():
    model, fragile = _fragile_model()
    x = torch.randn(256, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fragile(x), model(x), rtol=1e-4, atol=1e-3)
        labels = model(x).argmax(1)

    def agreement(m: nn.Module) -> float:  # top-1 agreement with the float model, in %
        with torch.no_grad():
            return float((m(x).argmax(1) == labels).float().mean() * 100)

    sim = prepare_quant_sim(fragile)
    calibrate(sim, x[:128].split(32))
    layers = ["0", "2", "4", "7"]
    rows = sensitivity(fragile, single_layer_factory(sim), agreement, layers)
    assert [r["name"] for r in rows][0] == "2" and sorted(r["name"] for r in rows) == layers
    assert rows[0]["drop"] > 5.0 and all(r["drop"] < rows[0]["drop"] for r in rows[1:])
    assert rows[0]["output_sqnr_db"] == min(r["output_sqnr_db"] for r in rows)
    assert all(r["baseline"] == 100.0 and r["drop"] == pytest.approx(100.0 - r["metric"]) for r in rows)
    drops = [r["drop"] for r in rows]
    assert drops == sorted(drops, reverse=True)
    # the same layers in the unmodified model are all robust: the ranking reflects the outlier, not the layer
    plain = prepare_quant_sim(model)
    calibrate(plain, x[:128].split(32))
    assert max(r["drop"] for r in sensitivity(model, single_layer_factory(plain), agreement, layers)) < rows[0]["drop"]
    # explicit inputs for the SQNR give the same figures as the batch evaluate fed the model
    again = sensitivity(fragile, single_layer_factory(sim), agreement, ["2"], inputs=x)
    assert again[0]["output_sqnr_db"] == pytest.approx(rows[0]["output_sqnr_db"])
