"""Layer numerics: exact copies are exact, the first perturbed layer is named, renamed layers still align."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from convopt.errors import ConvoptError, InputShapeError
from convopt.models import default_model
from convopt.testing import sqnr_db
from convopt.verify import compare_numerics
from convopt.verify.alignment import align
from convopt.verify.numerics import OUTPUT


pytestmark = pytest.mark.usefixtures("one_thread")


def small_net(names: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
              nn.Linear(4 * 8 * 8, 5)]  # fmt: skip
    keys = ["conv1", "relu1", "conv2", "relu2", "flatten", "fc"] if names else [str(i) for i in range(6)]
    return nn.Sequential(OrderedDict(zip(keys, layers))).eval()


def test_an_exact_copy_passes_every_layer():
    model = default_model()
    report = compare_numerics(model, copy.deepcopy(model), torch.rand(20, 1, 28, 28), batch_size=8)
    assert report.first_failing is None and report.layers[-1].name == OUTPUT
    assert len(report.layers) == 1 + sum(1 for m in model.modules() if not list(m.children()))
    for layer in report.layers:
        assert layer.passed and layer.sqnr_db == math.inf and layer.max_abs_error == 0.0
        assert layer.cosine == pytest.approx(1.0) and layer.matched_by in ("name", "output") and not layer.drift


def test_the_first_perturbed_layer_is_named_with_its_exact_sqnr():
    reference = small_net()
    candidate = copy.deepcopy(reference)
    with torch.no_grad():
        candidate.conv2.weight.add_(0.05 * torch.randn_like(candidate.conv2.weight))
    x = torch.rand(30, 1, 8, 8)
    report = compare_numerics(reference, candidate, x, batch_size=7, min_sqnr_db=40.0)
    rows = {layer.name: layer for layer in report.layers}
    assert report.first_failing == "conv2"
    assert rows["conv1"].passed and rows["relu1"].passed and not rows["conv2"].passed
    with torch.no_grad():
        expected = sqnr_db(reference.conv2(reference.relu1(reference.conv1(x))),
                           candidate.conv2(candidate.relu1(candidate.conv1(x))))  # fmt: skip
    assert rows["conv2"].sqnr_db == pytest.approx(expected, abs=1e-3) and "low_sqnr" in rows["conv2"].drift
    whole = compare_numerics(reference, candidate, x, batch_size=64)
    assert [r.sqnr_db for r in whole.layers] == pytest.approx([r.sqnr_db for r in report.layers], abs=1e-6)
    loose = compare_numerics(reference, candidate, x, min_sqnr_db=min(r.sqnr_db for r in report.layers) - 1)
    assert loose.first_failing is None


def test_renamed_layers_align_by_position():
    reference, candidate = small_net(names=True), small_net(names=False)
    candidate.load_state_dict({k.replace("conv1", "0").replace("conv2", "2").replace("fc", "5"): v
                               for k, v in reference.state_dict().items()})  # fmt: skip
    report = compare_numerics(reference, candidate, torch.rand(4, 1, 8, 8))
    pairs = [(layer.name, layer.candidate_name, layer.matched_by) for layer in report.layers[:-1]]
    assert pairs == [("conv1", "0", "position"), ("relu1", "1", "position"), ("conv2", "2", "position"),
                     ("relu2", "3", "position"), ("flatten", "4", "position"), ("fc", "5", "position")]  # fmt: skip
    assert report.first_failing is None


def test_alignment_prefers_names_and_skips_missing_layers():
    reference = [("conv", (4, 8)), ("bn", (4, 8)), ("relu", (4, 8)), ("fc", (5,))]
    fused = [("conv", (4, 8)), ("relu", (4, 8)), ("fc", (5,))]  # BN folded away
    assert align(reference, fused) == [(0, 0, "name"), (2, 1, "name"), (3, 2, "name")]
    assert align(reference, [("x", (3,))]) == []


def test_names_match_in_any_order_and_positions_stay_between_name_matches():
    reference = [("a", (4,)), ("b", (4,)), ("c", (4,)), ("d", (4,))]
    reordered = [("a", (4,)), ("c", (4,)), ("b", (4,)), ("x", (4,))]
    assert align(reference, reordered) == [(0, 0, "name"), (1, 2, "name"), (2, 1, "name"), (3, 3, "position")]
    assert align([("a", (4,)), ("b", (4,)), ("c", (4,))], [("x", (4,)), ("b", (4,))]) == [(0, 0, "position"),
                                                                                        (1, 1, "name")]  # fmt: skip


@pytest.mark.parametrize("second", ["fold", "fuse"])
def test_folded_and_fused_layers_compare_with_what_they_absorbed(second):
    import convopt
    from convopt.data import load_data

    x, _ = load_data("mnist", limit=16)
    model = default_model()
    steps = [convopt.FoldBatchNormConfig()] + ([convopt.FuseConfig()] if second == "fuse" else [])
    optimized = convopt.apply(model, convopt.Compose(steps), example_inputs=x[:1])
    optimized = (optimized[0] if isinstance(optimized, tuple) else optimized).eval()
    report = compare_numerics(model, optimized, x)
    rows = {layer.candidate_name: layer for layer in report.layers}
    assert report.first_failing is None and min(layer.sqnr_db for layer in report.layers) > 60
    absorbed = "stem.2" if second == "fuse" else "stem.1"  # conv+BN+ReLU in one call, or conv with BN folded in
    assert rows["stem.0"].name == absorbed and rows["stem.0"].matched_by == "fused"
    if second == "fuse":  # the residual add and ReLU went into layer1.conv2's fused call
        assert rows["layer1.conv2"].name == "layer1.relu2"


def test_nan_and_statistics_and_drift():
    class Broken(nn.Module):
        def __init__(self, base: nn.Module, scale: float, nan: bool) -> None:
            super().__init__()
            self.base, self.scale, self.nan = base, scale, nan

        def forward(self, x):
            y = self.base(x) * self.scale
            if self.nan:
                y[0, 0] = float("nan")
            return y

    base = nn.Linear(6, 3)
    x = torch.randn(50, 6)
    report = compare_numerics(Broken(base, 1.0, False), Broken(base, 1.0, True), x, batch_size=16)
    out = report.layers[-1]
    assert out.nan_count == 4 and not out.passed  # one NaN per batch of 16
    assert "nonfinite" in out.drift and report.first_failing == OUTPUT
    reference_values = base(x).detach().double()
    stats = report.layers[0].reference_stats
    assert stats.count == reference_values.numel() and sum(stats.histogram) == stats.count
    assert stats.mean == pytest.approx(float(reference_values.mean()), abs=1e-6)
    assert stats.std == pytest.approx(float(reference_values.std(unbiased=False)), rel=1e-5)
    assert (stats.min, stats.max) == pytest.approx((float(reference_values.min()), float(reference_values.max())))
    scaled = compare_numerics(Broken(base, 1.0, False), Broken(base, 1.5, False), x).layers[-1]
    assert "std_change" in scaled.drift and "range" in scaled.drift and scaled.cosine == pytest.approx(1.0)


def test_mismatched_outputs_raise():
    with pytest.raises(ConvoptError, match=r"output shape \(2, 4\) differs"):
        compare_numerics(nn.Linear(3, 5), nn.Linear(3, 4), torch.rand(2, 3))


def test_unobservable_candidates_are_compared_by_output_and_fixed_batch_programs_named(recwarn):
    model = small_net()
    x = torch.rand(6, 1, 8, 8)
    scripted = torch.jit.trace(model, x[:1])
    report = compare_numerics(model, scripted, x)
    assert [layer.name for layer in report.layers] == [OUTPUT] and report.first_failing is None
    assert "compared by output only" in report.notes[0]
    exported = torch.export.export(model, (x[:1],)).module()  # guards the batch size 1 it was exported with
    with pytest.raises(InputShapeError, match=r"rejects inputs of shape \(6, 1, 8, 8\).*--batch-size"):
        compare_numerics(model, exported, x)
    assert compare_numerics(model, exported, x, batch_size=1).first_failing is None
