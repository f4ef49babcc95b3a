"""compress(): prune / decompose / distill a copy of the model, per-layer before-after table, accuracy budget."""

import pytest
import torch

from convopt.compress_flow import CompressionPlan, compress, parse_decompose_spec
from convopt.data import load_mnist
from convopt.errors import BudgetExceededError, ConfigError
from convopt.models import default_model
from convopt.transforms.pipeline import apply


@pytest.fixture(scope="module")
def mnist():
    x, y = load_mnist("test")
    return (x[:200], y[:200])


def test_cli_specs_parse_and_bad_ones_say_the_form():
    assert parse_decompose_spec("tucker:0.5").ratio == 0.5
    assert parse_decompose_spec("cp:8").rank == 8
    assert parse_decompose_spec("svd:0.9").energy == 0.9
    for bad in ("tucker", "tucker:x", "pca:0.5"):
        with pytest.raises(ConfigError, match="tucker:MAC_RATIO"):
            parse_decompose_spec(bad)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        parse_decompose_spec("tucker:1.5")
    assert CompressionPlan.from_cli(None, None, 0, None) is None
    plan = CompressionPlan.from_cli("structured:0.5", None, 2, 0.5)
    assert plan.prune.kind == "structured" and plan.distill_epochs == 2 and plan.max_accuracy_drop == 0.5


def test_pruned_model_reports_layers_and_replays_from_its_structure(mnist, one_thread):
    model = default_model()
    x = mnist[0][:8]
    plan = CompressionPlan.from_cli("structured:0.5", None, 0, 100.0)
    result = compress(model, (x,), plan, eval_data=mnist, repeats=1)
    totals = result.report["totals"]
    assert totals["after"]["macs"] == pytest.approx(0.5 * totals["before"]["macs"], rel=0.05)
    assert any(row["macs_after"] < row["macs_before"] for row in result.report["layers"])
    assert [t["stage"] for t in result.report["trajectory"]] == ["original", "pruned"]
    rebuilt, _ = apply(default_model(), result.structure)
    rebuilt.load_state_dict(result.model.state_dict(), strict=True)
    assert torch.equal(rebuilt.eval()(x), result.model(x))
    assert [p.shape for p in model.parameters()] == [p.shape for p in default_model().parameters()]  # untouched


def test_budget_that_cannot_be_met_raises_with_the_achieved_figure(mnist, one_thread):
    plan = CompressionPlan.from_cli(None, "tucker:0.1", 0, 0.0)
    with pytest.raises(BudgetExceededError, match=r"best achieved.*--distill"):
        compress(default_model(), (mnist[0][:8],), plan, eval_data=mnist, repeats=1)


def test_distillation_needs_training_data(mnist):
    with pytest.raises(ConfigError, match="--distill needs labelled training data"):
        compress(default_model(), (mnist[0][:8],), CompressionPlan(distill_epochs=1), eval_data=mnist)
