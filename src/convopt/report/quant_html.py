"""The `quantization` section of report.html: per-layer INT8 error table with histograms, the layers that
broke the accuracy budget first, the layers left in float and why, and the mixed-precision trajectory.

Input: the report's `quantization` dict. Keys read (all but `layers` optional; missing ones are left out):
- layers: list of convopt.transforms.quant_sim.layer_report rows (name, kind, weight_sqnr_db, output_sqnr_db,
  cosine, max_abs_error, weight_range, act_range, weight_hist, act_hist, precision);
- excluded: {layer name: why it stays in float} (mixed precision, or op types the engine cannot run);
- sensitivity: quant_sim.sensitivity rows (name, drop, output_sqnr_db, ...), most sensitive first;
- max_accuracy_drop: the budget in points; broke_budget_first: layer names (else derived from sensitivity);
- trajectory: mixed_precision.choose_precision trajectory; accuracy: {label: value in %};
- engine, observer, engine_times_ms ({engine: ms}), notes (list of str).
Histograms are inline SVG bar charts (log-scaled counts, so outlier tails stay visible); no network needed.
"""

from __future__ import annotations

import html
import math
from typing import Any

from convopt.errors import ConfigError
from convopt.transforms.mixed_precision import budget_breakers

ROW_STYLE = {"float": "background:#eef3fa", "breaker": "color:#b00020"}


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _range(pair: Any) -> str:
    return f"[{_num(pair[0])}, {_num(pair[1])}]" if pair else "-"


def hist_svg(hist: dict[str, list[float]] | None, label: str, colour: str = "#2b7bba", width: int = 120,
             height: int = 28) -> str:  # fmt: skip
    """A small inline SVG bar chart of a {"edges", "counts"} histogram (bar height ~ log(1 + count))."""
    if not hist or not hist.get("counts"):
        return "-"
    counts, edges = hist["counts"], hist["edges"]
    top = math.log1p(max(counts)) or 1.0
    bar = width / len(counts)
    rects = "".join(
        f'<rect x="{i * bar:.2f}" y="{height - h:.2f}" width="{max(bar - 0.4, 0.4):.2f}" height="{h:.2f}"/>'
        for i, c in enumerate(counts)
        if (h := height * math.log1p(c) / top) > 0
    )
    title = html.escape(f"{label}: {len(counts)} bins on [{edges[0]:.4g}, {edges[-1]:.4g}], log-scaled counts")
    return (f'<svg class="hist" role="img" aria-label="{title}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg"><title>{title}</title>'
            f'<g fill="{colour}">{rects}</g></svg>')  # fmt: skip


def trajectory_svg(trajectory: list[dict[str, Any]], baseline_drop: float | None, width: int = 360,
                   height: int = 140) -> str:  # fmt: skip
    """Accuracy drop against the number of layers kept in float, one dot per configuration tried."""
    points = [(t["num_excluded"], t["drop"]) for t in trajectory if not math.isnan(t["drop"])]
    if not points:
        return ""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points] + ([baseline_drop] if baseline_drop is not None else [])
    x_high, y_low, y_high = max(max(xs), 1), min(min(ys), 0.0), max(max(ys), 1e-9)
    pad = 24

    def at(x: float, y: float) -> tuple[float, float]:
        return (pad + (width - 2 * pad) * x / x_high,
                height - pad - (height - 2 * pad) * (y - y_low) / (y_high - y_low or 1.0))  # fmt: skip

    dots = []
    for t in trajectory:
        if math.isnan(t["drop"]):
            continue
        cx, cy = at(t["num_excluded"], t["drop"])
        colour = "#176317" if t["meets_budget"] else "#b00020"
        dots.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{colour}"><title>{t["num_excluded"]} '
                    f'in float: drop {t["drop"]:.3g}</title></circle>')  # fmt: skip
    budget = ""
    if baseline_drop is not None:
        y = at(0, baseline_drop)[1]
        budget = (f'<line x1="{pad}" x2="{width - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#999" '
                  f'stroke-dasharray="4 3"/><text x="{width - pad}" y="{y - 3:.1f}" font-size="9" '
                  f'text-anchor="end">budget {baseline_drop:g}</text>')  # fmt: skip
    axes = (f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#444"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#444"/>'
            f'<text x="{width / 2}" y="{height - 6}" font-size="10" text-anchor="middle">layers kept in float</text>'
            f'<text x="4" y="{pad - 8}" font-size="10">accuracy drop (points)</text>'
            f'<text x="{pad - 3}" y="{pad + 3}" font-size="9" text-anchor="end">{y_high:.3g}</text>'
            f'<text x="{pad - 3}" y="{height - pad}" font-size="9" text-anchor="end">{y_low:.3g}</text>')  # fmt: skip
    return (f'<svg role="img" aria-label="mixed-precision trajectory" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
            f'{axes}{budget}{"".join(dots)}</svg>')  # fmt: skip


def breakers_of(quant: dict[str, Any]) -> list[str]:
    """The layers that broke the budget first: as given, or derived from the sensitivity ranking."""
    if quant.get("broke_budget_first") is not None:
        return list(quant["broke_budget_first"])
    if not quant.get("sensitivity") or quant.get("max_accuracy_drop") is None:
        return []
    return budget_breakers(quant["sensitivity"], set(quant.get("excluded") or {}), quant["max_accuracy_drop"])


def render_quant_section(quant: dict[str, Any]) -> str:
    """The `quantization` section as an HTML fragment (a <section> element) for report.html."""
    if not isinstance(quant, dict) or not isinstance(quant.get("layers"), list):
        raise ConfigError("render_quant_section needs the report's quantization dict with a 'layers' list "
                          "(rows from convopt.transforms.quant_sim.layer_report)")  # fmt: skip
    excluded = dict(quant.get("excluded") or {})
    drops = {row["name"]: row for row in quant.get("sensitivity") or []}
    breakers = breakers_of(quant)
    rows = []
    for layer in quant["layers"]:
        name = layer["name"]
        precision = "float" if name in excluded else layer.get("precision", "int8")
        classes = [c for c, on in (("float", precision != "int8"), ("breaker", name in breakers)) if on]
        style = ";".join(ROW_STYLE[c] for c in classes)
        flag = f" <b>(broke the budget #{breakers.index(name) + 1})</b>" if name in breakers else ""
        drop = drops.get(name, {}).get("drop")
        rows.append(
            f"<tr class='{' '.join(classes)}' style='{style}'><td>{html.escape(name)}{flag}</td>"
            f"<td>{html.escape(str(layer.get('kind', '-')))}</td><td>{html.escape(precision)}</td>"
            f"<td>{_num(layer.get('weight_sqnr_db'))}</td>"
            f"<td>{_num(layer.get('output_sqnr_db'))}</td><td>{_num(layer.get('cosine'), 6)}</td>"
            f"<td>{_num(layer.get('max_abs_error'))}</td><td>{_range(layer.get('weight_range'))}</td>"
            f"<td>{_range(layer.get('act_range'))}</td><td>{_num(drop)}</td>"
            f"<td>{hist_svg(layer.get('weight_hist'), name + ' weights')}</td>"
            f"<td>{hist_svg(layer.get('act_hist'), name + ' input activations', '#e08214')}</td></tr>"
        )  # fmt: skip
    parts = ["<section class='quant' id='quantization'><h2>INT8 quantization</h2>"]
    facts = [f"{k.replace('_', ' ')}: {html.escape(str(quant[k]))}" for k in ("engine", "observer") if quant.get(k)]
    if quant.get("max_accuracy_drop") is not None:
        facts.append(f"accuracy budget: at most {_num(quant['max_accuracy_drop'])} points lost")
    facts += [f"{html.escape(str(k))}: {_num(v, 4)}" for k, v in (quant.get("accuracy") or {}).items()]
    facts += [f"{html.escape(str(k))}: {_num(v)} ms" for k, v in (quant.get("engine_times_ms") or {}).items()]
    int8 = sum(1 for layer in quant["layers"] if layer["name"] not in excluded)
    facts.append(f"{int8} of {len(quant['layers'])} layers in int8")
    parts.append("<p class='note'>" + "; ".join(facts) + "</p>")
    if breakers:
        items = "".join(
            f"<li>{html.escape(n)}: drop {_num(drops.get(n, {}).get('drop'))} points alone, "
            f"model output SQNR {_num(drops.get(n, {}).get('output_sqnr_db'))} dB</li>" for n in breakers
        )  # fmt: skip
        parts.append(f"<h3>Layers that broke the budget first</h3><ol class='breakers'>{items}</ol>")
    if excluded:
        items = "".join(f"<li>{html.escape(n)}: {html.escape(str(why))}</li>" for n, why in excluded.items())
        parts.append(f"<h3>Layers left in float</h3><ul class='excluded'>{items}</ul>")
    parts.append(
        "<h3>Per-layer error (each layer alone in int8, on its real input)</h3><table class='quant-layers'>"
        "<tr><th>layer</th><th>kind</th><th>precision</th><th>weight SQNR dB</th><th>output SQNR dB</th>"
        "<th>cosine</th><th>max |err|</th><th>weight range</th><th>input range</th><th>metric drop</th>"
        "<th>weights</th><th>inputs</th></tr>" + "".join(rows) + "</table>"
    )  # fmt: skip
    trajectory = quant.get("trajectory") or []
    if trajectory:
        steps = "".join(
            f"<tr style='{'' if t['meets_budget'] else ROW_STYLE['breaker']}'><td>{t['step']}</td>"
            f"<td>{t['num_excluded']}</td><td>{_num(t['accuracy'], 4)}</td><td>{_num(t['drop'])}</td>"
            f"<td>{'yes' if t['meets_budget'] else 'no'}</td>"
            f"<td>{html.escape(', '.join(t['excluded']) or '-')}</td></tr>"
            for t in trajectory
        )  # fmt: skip
        parts.append(
            "<h3>Mixed-precision search</h3>" + trajectory_svg(trajectory, quant.get("max_accuracy_drop"))
            + "<table class='trajectory'><tr><th>step</th><th>in float</th><th>accuracy</th><th>drop</th>"
            "<th>meets budget</th><th>layers in float</th></tr>" + steps + "</table>"
        )  # fmt: skip
    notes = quant.get("notes") or []
    if notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>")
    parts.append("</section>")
    return "".join(parts)


__all__ = ["breakers_of", "hist_svg", "render_quant_section", "trajectory_svg"]
