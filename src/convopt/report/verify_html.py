"""A self-contained HTML page for a VerifyReport: inline CSS, inline SVG charts, no scripts, no fetches.

Charts: robust accuracy against eps (one line per model and attack) and certified accuracy against
radius (randomized smoothing). Tables: accuracy, per-layer numerics with the first failing layer
highlighted, IBP, profile bottlenecks, warnings.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Sequence

from convopt.io import atomic_write_text
from convopt.verify.report import VerifyReport

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { padding: 3px 9px; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f5f5f5; } td.l, th.l { text-align: left; }
tr.fail td { color: #b00; } tr.first td { background: #fde2e2; font-weight: bold; color: #900; }
.ok { color: #070; } .bad { color: #b00; } .warn { color: #a60; } .dim { color: #777; }
svg { background: #fff; border: 1px solid #ddd; margin: .5em 1em .5em 0; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def line_chart(series: dict[str, Sequence[tuple[float, float]]], title: str, x_label: str, y_label: str,
               width: int = 520, height: int = 320) -> str:  # fmt: skip
    """An SVG line chart of y in [0, 1] against x, one polyline (with markers) per series."""
    left, right, top, bottom = 56, 150, 30, 44
    xs = [x for points in series.values() for x, _ in points] or [0.0, 1.0]
    x_min, x_max = min(xs), max(xs)
    x_max = x_max if x_max > x_min else x_min + 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_min) / (x_max - x_min) * plot_w

    def py(y: float) -> float:
        return top + (1.0 - y) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<title>{_e(title)}</title>',
             f'<text x="{left}" y="18" font-size="13" font-weight="bold">{_e(title)}</text>']  # fmt: skip
    for i in range(6):  # y grid and labels: 0%, 20%, ..., 100%
        y = top + i * plot_h / 5
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{100 - 20 * i}%</text>')
    for i in range(5):
        value = x_min + i * (x_max - x_min) / 4
        parts.append(f'<text x="{px(value):.1f}" y="{top + plot_h + 16}" font-size="11" '
                     f'text-anchor="middle">{value:.3g}</text>')  # fmt: skip
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="12" text-anchor="middle">'
                 f'{_e(x_label)}</text>')  # fmt: skip
    parts.append(f'<text x="14" y="{top + plot_h / 2}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + plot_h / 2})">{_e(y_label)}</text>')  # fmt: skip
    for index, (label, points) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>' for x, y in points)
        legend_y = top + 14 + 16 * index
        parts.append(f'<line x1="{width - right + 10}" y1="{legend_y - 4}" x2="{width - right + 26}" '
                     f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>')  # fmt: skip
        parts.append(f'<text x="{width - right + 30}" y="{legend_y}" font-size="11">{_e(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _table(headers: Sequence[str], rows: list[tuple[list[str], str]], left: int = 1) -> str:
    head = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for cells, css in rows:
        tds = "".join(f'<td class="l">{_e(c)}</td>' if i < left else f"<td>{_e(c)}</td>" for i, c in enumerate(cells))
        body.append(f'<tr class="{css}">{tds}</tr>' if css else f"<tr>{tds}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _numerics_section(report: VerifyReport) -> str:
    numerics = report.numerics
    verdict = (f'<p class="bad">First layer out of tolerance: <b>{_e(numerics.first_failing)}</b></p>'
               if numerics.first_failing else '<p class="ok">Every layer within tolerance.</p>')  # fmt: skip
    rows = []
    for layer in numerics.layers:
        css = "first" if layer.name == numerics.first_failing else ("fail" if not layer.passed else "")
        rs, cs = layer.reference_stats, layer.candidate_stats
        rows.append(([layer.name, layer.candidate_name, layer.matched_by, layer.kind, _fmt(layer.max_abs_error),
                      _fmt(layer.rel_l2_error), _fmt(layer.sqnr_db, 4), f"{layer.cosine:.6f}",
                      f"{layer.nan_count}/{layer.inf_count}", f"{_fmt(rs.mean)} / {_fmt(cs.mean)}",
                      f"{_fmt(rs.std)} / {_fmt(cs.std)}", f"[{_fmt(cs.min)}, {_fmt(cs.max)}]",
                      ", ".join(layer.drift) or "-"], css))  # fmt: skip
    headers = ["layer", "candidate layer", "matched", "kind", "max |err|", "rel L2", "SQNR dB", "cosine", "NaN/Inf",
               "mean ref/cand", "std ref/cand", "cand range", "drift"]  # fmt: skip
    return (f"<h2>Layer numerics</h2><p>Tolerance: SQNR &ge; {numerics.min_sqnr_db:g} dB and no NaN/Inf the "
            f"reference lacks; {numerics.num_samples} samples.</p>{verdict}{_table(headers, rows, left=4)}")


def _robustness_sections(report: VerifyReport) -> str:
    out = []
    if report.attacks:
        series, rows = {}, []
        for role, curves in report.attacks.items():
            for curve in curves:
                label = f"{role} {curve.attack}" + (" (surrogate)" if curve.surrogate else "")
                series[label] = [(0.0, curve.clean_accuracy)] + [(p.eps, p.robust_accuracy) for p in curve.points]
                rows.extend(([role, curve.attack, curve.norm, f"{p.eps:g}", f"{100 * p.robust_accuracy:.1f}%",
                              _fmt(p.max_perturbation, 4), f"{100 * p.zero_gradient_fraction:.0f}%"], "")
                            for p in curve.points)  # fmt: skip
        out.append("<h2>Attacks</h2>" + line_chart(series, "robust accuracy vs eps", "eps", "robust accuracy"))
        out.append(_table(["model", "attack", "norm", "eps", "robust", "max |delta|", "zero grad"], rows, left=3))
    if report.smoothing:
        series = {role: part.curve for role, part in report.smoothing.items()}
        first = next(iter(report.smoothing.values()))
        rows = [([role, str(p.num_samples), f"{100 * p.certified_accuracy:.1f}%", f"{100 * p.abstain_rate:.1f}%"], "")
                for role, p in report.smoothing.items()]  # fmt: skip
        out.append(f"<h2>Randomized smoothing</h2><p>sigma {first.sigma:g}, n0 {first.n0}, n {first.n}, "
                   f"alpha {first.alpha:g} (Cohen, Rosenfeld &amp; Kolter 2019).</p>")  # fmt: skip
        out.append(line_chart(series, "certified accuracy vs L2 radius", "radius", "certified accuracy"))
        out.append(_table(["model", "samples", "certified (r=0)", "abstain"], rows))
    if report.ibp:
        rows = [([role, f"{p.eps:g}", str(p.num_samples), f"{100 * p.clean_accuracy:.1f}%",
                  f"{100 * p.certified_accuracy:.1f}%", _fmt(p.mean_bound_width)], "")
                for role, p in report.ibp.items()]  # fmt: skip
        out.append("<h2>Interval bound propagation</h2>"
                   + _table(["model", "eps", "samples", "clean", "certified", "mean bound width"], rows))
    return "".join(out)


def render_verify_html(report: VerifyReport) -> str:
    """The whole report as one HTML document (a string)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>convopt verify: {_e(report.candidate)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>convopt verify</h1><p>Candidate <b>{_e(report.candidate)}</b> against reference "
             f"<b>{_e(report.reference)}</b> on <b>{_e(report.data)}</b> ({report.num_samples} samples, "
             f"{report.seconds:.1f} s).</p>"]  # fmt: skip
    if report.accuracy:
        acc = report.accuracy
        rows = [([getattr(report, role), f"{100 * part.top1:.2f}%", f"{100 * part.topk:.2f}%"], "")
                for role, part in (("reference", acc.reference), ("candidate", acc.candidate))]  # fmt: skip
        parts.append(f"<h2>Accuracy</h2>{_table(['model', 'top-1', f'top-{acc.k}'], rows)}"
                     f"<p>Top-1 agreement {100 * acc.agreement:.2f}%; top-1 drop {acc.top1_drop:.2f} points.</p>")
    if report.numerics:
        parts.append(_numerics_section(report))
    parts.append(_robustness_sections(report))
    if report.profile:
        rows = [([role, layer.name, layer.kind, f"{layer.milliseconds:.3g}", f"{100 * layer.fraction:.1f}%"], "")
                for role, part in report.profile.items() for layer in part.layers[:5]]  # fmt: skip
        parts.append("<h2>Profile (slowest layers)</h2>" + _table(["model", "layer", "kind", "ms", "share"], rows, 3))
    if report.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f'<li class="warn">{_e(w)}</li>' for w in report.warnings)
                     + "</ul>")  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)


def write_verify_html(report: VerifyReport, path: str | os.PathLike) -> Path:
    """Write the HTML report atomically; returns the path written."""
    return atomic_write_text(path, render_verify_html(report))


__all__ = ["line_chart", "render_verify_html", "write_verify_html"]
