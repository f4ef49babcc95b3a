"""Compression report renderers on a real compress() report: per-layer rich table and HTML section."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from html_check import parse_html
from rich.console import Console

from convopt.compress_flow import CompressionPlan, compress
from convopt.data import load_mnist
from convopt.errors import ConfigError
from convopt.models import default_model
from convopt.report.compress_html import ratio, render_compress_section
from convopt.report.compress_terminal import compress_table

RATIO = re.compile(r"^(\d+(?:\.\d+)?(?:e[-+]\d+)?)x$")


@pytest.fixture(scope="module")
def report(one_thread) -> dict:
    """compress() on the embedded default: prune to 50% MACs, Tucker-2, one short distillation epoch."""
    x_test, y_test = load_mnist("test")
    x_train, y_train = load_mnist("train")
    eval_data = (x_test[::5], y_test[::5])  # 200 digits, 20 per class (the split is sorted by class)
    train_data = (x_train[::16], y_train[::16])  # 250 digits: a few steps, enough for a trajectory
    plan = CompressionPlan.from_cli("structured:0.5", "tucker:0.5", 1, 100.0)
    return compress(default_model(), (x_test[:8],), plan, train_data=train_data, eval_data=eval_data,
                    repeats=1).report  # fmt: skip


def _close(text: str, expected: float) -> bool:
    """A 3-significant-digit ratio cell ("0.503x") matches after/before."""
    match = RATIO.match(text.strip())
    return match is not None and float(match.group(1)) == pytest.approx(expected, rel=6e-3)


def test_terminal_table_has_every_layer_and_right_ratios(report):
    table = compress_table(report)
    cells = [list(column._cells) for column in table.columns]
    names = cells[0]
    assert names == [row["name"] for row in report["layers"]] + ["total"]
    rows = report["layers"] + [{**{f"{k}_before": v for k, v in report["totals"]["before"].items()},
                                **{f"{k}_after": v for k, v in report["totals"]["after"].items()}}]  # fmt: skip
    for i, row in enumerate(rows):
        for column, metric in ((2, "macs"), (4, "params"), (6, "ms")):
            expected = ratio(row[f"{metric}_before"], row[f"{metric}_after"])
            assert _close(cells[column][i], expected), (names[i], metric, cells[column][i], expected)
    total_macs = report["totals"]["after"]["macs"] / report["totals"]["before"]["macs"]
    assert 0.2 < total_macs < 0.55  # pruning to 50% and then Tucker-2 shrink the model
    # What changed: a pruned-and-decomposed conv says both; the head says why it was left alone.
    what = dict(zip(names, cells[7]))
    assert "channels" in what["layer1.conv1"] and "Tucker-2" in what["layer1.conv1"]
    assert what["fc"].startswith("skipped:")
    console = Console(width=240, record=True, color_system=None)
    console.print(table)
    text = console.export_text()
    assert "trajectory: original" in text and "distill epoch 1" in text
    assert f"{report['accuracy']['before']:.2f}%" in text
    assert report["plan"]["augment"] == "random shifts up to 2 px"  # the plan's default shift reached distill


def test_html_section_is_well_formed_with_layers_ratios_chart_and_reasons(report):
    fragment = render_compress_section(report)
    checker = parse_html(fragment)
    assert checker.names[0] == "section" and {"table", "svg", "polyline"} <= set(checker.names)
    by_name = {row[0]: row for row in checker.rows if row}
    for layer in report["layers"]:
        cells = by_name[layer["name"]]
        for column, metric in ((2, "macs"), (4, "params"), (6, "ms")):
            assert _close(cells[column], ratio(layer[f"{metric}_before"], layer[f"{metric}_after"])), cells
    assert _close(by_name["total"][2], report["totals"]["after"]["macs"] / report["totals"]["before"]["macs"])
    text = "".join(checker.text)
    plan = report["plan"]
    assert (f"distillation: 1 epoch(s) (lr={plan['lr']:g}, temperature={plan['temperature']:g}, "
            f"alpha={plan['alpha']:g}, augment=random shifts up to 2 px)") in text  # fmt: skip
    for step in report["steps"]:
        for name, why in step["skipped"].items():
            assert why in text  # every skipped layer's reason is shown
    stages = [row[1] for row in checker.rows if len(row) == 4]
    assert stages == [t["stage"] for t in report["trajectory"]]


def test_html_escapes_layer_names_and_reasons(report):
    evil = '<img src=x onerror="alert(1)">&layer'
    hacked = copy.deepcopy(report)
    hacked["layers"][0]["name"] = evil
    hacked["steps"][0]["skipped"][evil] = "<script>bad()</script>"
    fragment = render_compress_section(hacked)
    checker = parse_html(fragment)
    assert "img" not in checker.names and "script" not in checker.names
    text = "".join(checker.text)
    assert evil in text and "<script>bad()</script>" in text  # shown literally, as text
    assert evil in [row[0] for row in checker.rows if row]


def test_not_a_report_raises_with_the_missing_keys():
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['accuracy'"):
        render_compress_section({"layers": []})
    with pytest.raises(ConfigError, match="CompressResult.report"):
        compress_table([])
    assert ratio(0, 5) is None and ratio(None, 1.0) is None and ratio(4, 1) == 0.25


def test_random_shift_moves_every_channel_together_within_range():
    from convopt.compress_flow import random_shift
    from convopt.models.train_default import random_shift as mnist_shift

    x = torch.rand(6, 1, 28, 28)
    assert torch.equal(random_shift(x, torch.Generator().manual_seed(3), 2),
                       mnist_shift(x, torch.Generator().manual_seed(3), 2))  # fmt: skip
    x = torch.rand(6, 3, 5, 7) + 1.0  # several channels, not square, no zeros of its own
    out = random_shift(x, torch.Generator().manual_seed(0), 1)
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(len(x)):
        offsets = [(dy, dx) for dy in range(3) for dx in range(3)
                   if torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 7])]  # fmt: skip
        assert len(offsets) == 1, i
    assert out.shape == x.shape and (out == 0).any()  # some image moved: zero fill came in
    with pytest.raises(ConfigError, match="shift=-1"):
        CompressionPlan(shift=-1)
