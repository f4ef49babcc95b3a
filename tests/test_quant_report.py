"""Quantization report renderers: HTML section (table, histograms, budget breakers, trajectory) and rich table."""

from __future__ import annotations

import io

import pytest
import torch
from html_check import parse_html
from rich.console import Console
from torch import nn

from convopt.errors import ConfigError
from convopt.report.quant_html import hist_svg, render_quant_section
from convopt.report.quant_terminal import quant_table
from convopt.transforms.mixed_precision import choose_precision
from convopt.transforms.quant_sim import calibrate, layer_report, prepare_quant_sim, sensitivity, single_layer_factory

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def sample_quant() -> dict:
    """A quantization dict built the way the flow builds it, from a small model with one fragile layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()  # fmt: skip
    with torch.no_grad():  # same function, but conv "2" sees a huge input range (see test_mixed_precision)
        model[0].weight[0] *= 1000.0
        model[0].bias[0] *= 1000.0
        model[2].weight[:, 0] /= 1000.0
    x = torch.randn(128, 3, 6, 6)
    sim = prepare_quant_sim(model)
    calibrate(sim, x.split(32))
    with torch.no_grad():
        labels = model(x).argmax(1)

    def agreement(m):
        with torch.no_grad():
            return float((m(x).argmax(1) == labels).float().mean() * 100)

    ranking = sensitivity(model, single_layer_factory(sim), agreement, ["0", "2", "5"])

    def build_and_evaluate(excluded):
        candidate = prepare_quant_sim(model, exclude=excluded)
        calibrate(candidate, x.split(32))
        return agreement(candidate)

    choice = choose_precision([r["name"] for r in ranking], build_and_evaluate, 100.0, 1.0)
    excluded = {name: "kept in float by mixed precision (budget 1.0 points)" for name in choice.excluded}
    return {
        "engine": "openvino", "observer": "minmax", "max_accuracy_drop": 1.0,
        "accuracy": {"float top-1 %": 100.0, "int8 top-1 %": choice.accuracy},
        "engine_times_ms": {"openvino": 1.25, "onnxruntime": 2.5},
        "layers": layer_report(model, sim, x[:32]), "sensitivity": ranking, "excluded": excluded,
        "trajectory": choice.trajectory, "notes": ["calibrated on 128 samples <script>"],
    }  # fmt: skip


def test_sample_dict_has_a_budget_breaker(sample_quant):
    assert sample_quant["sensitivity"][0]["name"] == "2" and "2" in sample_quant["excluded"]
    assert len(sample_quant["trajectory"]) >= 2


def test_html_section_is_a_valid_fragment_with_table_histograms_and_breakers(sample_quant):
    fragment = render_quant_section(sample_quant)
    checker = parse_html(fragment)
    text = " ".join(checker.text)
    assert fragment.startswith("<section") and fragment.endswith("</section>")
    tables = [attrs.get("class") for tag, attrs in checker.tags if tag == "table"]
    assert "quant-layers" in tables and "trajectory" in tables
    # one table row per layer (plus the header), each with a weight and an activation histogram
    rows = fragment.split("<table class='quant-layers'>")[1].split("</table>")[0].count("<tr")
    assert rows == len(sample_quant["layers"]) + 1
    histograms = [attrs for tag, attrs in checker.tags if tag == "svg" and attrs.get("class") == "hist"]
    assert len(histograms) == 2 * len(sample_quant["layers"])
    bars = fragment.count("<rect")
    assert bars > len(histograms)  # bars drawn, not empty frames
    for layer in sample_quant["layers"]:
        assert f"{layer['output_sqnr_db']:.3g}" in text and f"{layer['weight_sqnr_db']:.3g}" in text
    # the layer that broke the budget first is listed first and flagged in the table
    breakers = fragment.split("<ol class='breakers'>")[1].split("</ol>")[0]
    assert breakers.startswith("<li>2:")
    assert "(broke the budget #1)" in fragment
    assert "Layers left in float" in text and "kept in float by mixed precision" in text
    assert "openvino" in text and "&lt;script&gt;" in fragment and "<script>" not in fragment  # escaped
    assert "mixed-precision trajectory" in fragment and fragment.count("<circle") == len(sample_quant["trajectory"])


def test_html_without_optional_parts(sample_quant):
    minimal = {"layers": sample_quant["layers"][:1]}
    checker = parse_html(render_quant_section(minimal))
    assert "1 of 1 layers in int8" in " ".join(checker.text)
    assert "breakers" not in render_quant_section(minimal) and "trajectory" not in render_quant_section(minimal)
    given = dict(sample_quant, broke_budget_first=["5"])
    assert "<ol class='breakers'><li>5:" in render_quant_section(given)
    with pytest.raises(ConfigError, match="layers"):
        render_quant_section({"engine": "openvino"})


def test_histogram_svg_scales_with_counts():
    svg = hist_svg({"edges": [0.0, 1.0, 2.0, 3.0], "counts": [100, 0, 1]}, "w")
    heights = [float(part.split('"')[0]) for part in svg.split('height="')[2:]]
    assert len(heights) == 2 and heights[0] > heights[1] > 0  # the empty bin draws nothing
    assert hist_svg(None, "w") == "-"


def test_rich_table_marks_the_first_budget_breaker(sample_quant):
    table = quant_table(sample_quant)
    assert table.row_count == len(sample_quant["layers"])
    console = Console(width=220, record=True, color_system=None, file=io.StringIO())
    console.print(table)
    text = console.export_text()
    line = next(row for row in text.splitlines() if "<- broke the budget first" in row)
    assert line.split()[1] == "2" and "float" in line
    assert "engine: openvino" in text and "budget 1 points" in text
    for layer in sample_quant["layers"]:
        assert f"{layer['weight_sqnr_db']:.3g}" in text
    styles = [str(row.style) for row in table.rows]
    names = [layer["name"] for layer in sample_quant["layers"]]
    assert styles[names.index("2")] == "bold red"
    extra = dict(sample_quant, excluded={**sample_quant["excluded"], "roi_align": "op not supported by the engine"})
    assert quant_table(extra).row_count == len(sample_quant["layers"]) + 1
    with pytest.raises(ConfigError):
        quant_table({})
