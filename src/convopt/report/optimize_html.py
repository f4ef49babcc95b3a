"""Self-contained report.html for `convopt optimize`: inline SVG charts and tables, no network needed."""

from __future__ import annotations

import html
import io
from typing import Any

from convopt.analysis.hardware import HardwareProfile

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;width:100%}td,th{padding:.25rem .5rem;border-bottom:1px solid #eee;
text-align:right}td:first-child,th:first-child{text-align:left}.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:8px;padding:.8rem 1rem;min-width:180px}.card b{font-size:1.3rem;display:block}
.note{color:#555;font-size:.9rem}tr.fail td{color:#b00020;font-weight:bold}.chart svg{max-width:100%;height:auto}.best{font-weight:bold;color:#176317}
"""


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def backends_chart(backends: dict[str, dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, v in backends.items() if v.get("ms")]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(names)), dpi=100)
    values = [backends[n]["ms"] for n in names]
    colours = ["#2b7bba" if n == "convopt" else "#999" for n in names]
    ax.barh(names, values, color=colours)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f} ms ({backends[names[i]]['speedup_vs_eager']:.2f}x)", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median latency (ms), same inputs and threads")
    ax.set_xlim(0, max(values) * 1.35)
    return _svg(fig)


def layer_chart(layers: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer["name"] for layer in layers]
    before = [layer["candidates"].get("direct", 0) for layer in layers]
    after = [layer["candidates"].get(layer["algorithm"], 0) for layer in layers]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.32 * len(names)), dpi=100)
    positions = range(len(names))
    ax.barh([p - 0.2 for p in positions], before, height=0.4, color="#bbb", label="before (PyTorch direct)")
    ax.barh([p + 0.2 for p in positions], after, height=0.4, color="#2b7bba", label="after (chosen algorithm)")
    ax.set_yticks(list(positions), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("conv layer time (ms, median)")
    ax.legend(fontsize=8)
    return _svg(fig)


def roofline_chart(layers: list[dict[str, Any]], hardware: HardwareProfile) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak, bandwidth = hardware.peak_macs_per_s() / 1e9, hardware.bandwidth_gbs
    points = [layer for layer in layers if layer.get("macs") and layer.get("bytes")]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    if points:
        intensities = [p["macs"] / p["bytes"] for p in points]
        low, high = min(intensities + [hardware.ridge_point()]) / 3, max(intensities + [hardware.ridge_point()]) * 3
        xs = [low * (high / low) ** (i / 100) for i in range(101)]
        ax.plot(xs, [min(peak, x * bandwidth) for x in xs], color="black", lw=2,
                label=f"roof {peak:.0f} GMAC/s, {bandwidth:.1f} GB/s")  # fmt: skip
        before = [p["macs"] / (p["candidates"]["direct"] * 1e-3) / 1e9 for p in points]
        after = [p["macs"] / (p["candidates"][p["algorithm"]] * 1e-3) / 1e9 for p in points]
        ax.scatter(intensities, before, color="#bbb", label="before", zorder=3)
        ax.scatter(intensities, after, color="#2b7bba", label="after (direct-equivalent MACs)", zorder=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs per byte)")
    ax.set_ylabel("GMAC/s")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    return _svg(fig)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def render(report: dict[str, Any], hardware: HardwareProfile) -> str:
    """The whole page as one string."""
    acc, lat, size = report["accuracy"], report["latency_ms"], report["size_bytes"]
    cards = [
        ("latency", f"{lat['before']:.2f} → {lat['after']:.2f} ms", f"batch {lat['batch']}, {report['threads']} threads"),
        ("speed-up", f"{lat['before'] / lat['after']:.2f}x", "vs eager PyTorch"),
        ("accuracy", f"{_fmt(acc['before'])} → {_fmt(acc['after'])} %", "top-1 on the labelled data"),
        ("max relative error", f"{report['max_rel_error']:.1e}", "outputs vs the original"),
        ("size", f"{size['before'] / 1e6:.2f} → {size['after'] / 1e6:.2f} MB", "parameters and buffers"),
        ("fastest here", html.escape(report["fastest"]), "among the backends measured"),
    ]
    rows = "".join(
        f"<tr><td>{html.escape(l['name'])}</td><td>{html.escape(l['algorithm'])}</td><td>{_fmt(l.get('fused'))}</td>"
        + "".join(f"<td class='{'best' if n == l['algorithm'] else ''}'>{html.escape(n)} {v:.3f}</td>"
                  for n, v in sorted(l["candidates"].items(), key=lambda kv: kv[1]))  # fmt: skip
        + "</tr>"
        for l in report["layers"]
    )
    backend_rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_fmt(v.get('ms'))}</td><td>{_fmt(v.get('speedup_vs_eager'))}</td>"
        f"<td>{_fmt(v.get('max_rel_error'))}</td><td>{_fmt(v.get('unavailable'))}</td></tr>"
        for n, v in report["backends"].items()
    )
    passes = "".join(
        f"<tr><td>{html.escape(p['config']['type'])}</td><td>{len(p['changed'])}</td><td>{len(p['skipped'])}</td>"
        f"<td>{_fmt(p.get('max_rel_error'))}</td></tr>"
        for p in report["passes"]
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"])
    numerics = report.get("numerics") or {"layers": []}
    numeric_rows = "".join(
        f"<tr class='{'' if n['passed'] else 'fail'}'><td>{html.escape(n['name'])}</td>"
        f"<td>{html.escape(n['candidate_name'])}</td><td>{html.escape(n['matched_by'])}</td>"
        f"<td>{n['max_abs_error']:.2e}</td><td>{n['sqnr_db']:.1f}</td><td>{n['cosine']:.6f}</td></tr>"
        for n in numerics["layers"]
    )
    first_failing = numerics.get("first_failing")
    hw = hardware
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>convopt report: {html.escape(report['model'])}</title><style>{CSS}</style></head><body>
<h1>convopt optimize: {html.escape(report['model'])}</h1>
<p class="note">input {report['input_shape']}, {report['threads']} threads, {report['seconds']:.1f} s;
tuning: {report['tuning'].get('cache_hits', 0)} of {len(report['layers'])} layers served from the cache</p>
<div class="cards">{''.join(f'<div class="card">{t}<b>{v}</b><span class="note">{s}</span></div>' for t, v, s in cards)}</div>
<h2>Backends, side by side</h2><div class="chart" id="chart-backends">{backends_chart(report['backends'])}</div>
<table><tr><th>backend</th><th>ms</th><th>speed-up</th><th>max rel. error</th><th>unavailable</th></tr>{backend_rows}</table>
<h2>Per-layer time, before and after</h2><div class="chart" id="chart-layers">{layer_chart(report['layers'])}</div>
<h2>Roofline, before and after</h2><div class="chart" id="chart-roofline">{roofline_chart(report['layers'], hw)}</div>
<h2>Chosen algorithm per layer (every candidate, ms)</h2>
<table><tr><th>layer</th><th>algorithm</th><th>fused</th><th colspan="8">candidates, fastest first</th></tr>{rows}</table>
<h2>Numerics, layer by layer (convopt's kernels vs the original)</h2>
<p class="note">{'first layer over the tolerance: ' + html.escape(first_failing) if first_failing else
'every layer within tolerance'} (SQNR floor {numerics.get('min_sqnr_db', 0):.0f} dB,
{numerics.get('num_samples', 0)} samples)</p>
<table><tr><th>layer</th><th>candidate</th><th>matched by</th><th>max |err|</th><th>SQNR dB</th><th>cosine</th></tr>
{numeric_rows}</table>
<h2>Passes</h2><table><tr><th>pass</th><th>changed</th><th>skipped</th><th>rel. error after</th></tr>{passes}</table>
<h2>Notes</h2><ul>{notes}</ul>
<h2>Hardware profile</h2><p>{html.escape(str(hw.fingerprint.get('cpu_model')))}, {hw.threads} threads, torch
{html.escape(str(hw.fingerprint.get('torch_version')))}: measured peak
{', '.join(f'{k} {v:.0f} G{"OP" if k == "int8" else "FLOP"}/s' for k, v in hw.peak_gflops.items())};
bandwidth {hw.bandwidth_gbs:.1f} GB/s.</p></body></html>"""
