"""The `compression` section of report.html: what pruning / decomposition / distillation did to each layer.

Input: the `report` dict of convopt.compress_flow.compress (CompressResult.report). Keys read:
- plan: {prune: PruneConfig dict | None, decompose: DecomposeConfig dict | None, distill_epochs, max_accuracy_drop,
  and with distillation lr, temperature, alpha, augment};
- accuracy: {before, after} top-1 in % (None without labelled data);
- totals: {before, after} each {macs, params, ms} (ms: measured latency of the whole model at the example batch);
- layers: rows {name, macs_before, macs_after, params_before, params_after, ms_before, ms_after} (a decomposed
  layer's "after" sums its pieces);
- steps: one record per prune / decompose step {config, changed {module: what}, skipped {module: why}, notes};
- trajectory: [{stage, accuracy, loss?}] from the original through each distillation epoch;
- training: {epochs: [{epoch, loss, metric, seconds}]} or None; seconds: wall time of compress().
Ratios are after / before (0.5 = half left); speed-ups are before / after. Self-contained: inline SVG, no network.
"""

from __future__ import annotations

import html
import math
from typing import Any

from convopt.errors import ConfigError
from convopt.report.verify_html import line_chart

METRICS = ("macs", "params", "ms")
# The keys a report must have for the section to make sense; others are optional.
REQUIRED = ("accuracy", "totals", "layers", "steps", "trajectory")


def check_report(report: Any, who: str) -> None:
    """Raise ConfigError unless `report` looks like compress()'s report dict."""
    missing = [k for k in REQUIRED if not isinstance(report, dict) or k not in report]
    if missing:
        raise ConfigError(f"{who} needs the report dict of convopt.compress_flow.compress (CompressResult.report); "
                          f"missing key(s) {missing}")  # fmt: skip


def ratio(before: float | None, after: float | None) -> float | None:
    """after / before, or None when either is unknown or `before` is 0 (nothing to compare against)."""
    if before is None or after is None or not before:
        return None
    return after / before


def si(value: float | None, unit: str = "") -> str:
    """A count with a k / M / G suffix and 3 significant digits ("14.5M"); "-" when unknown."""
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def fmt_ratio(value: float | None) -> str:
    """A ratio as "0.503x" (3 significant digits); "-" when unknown."""
    return "-" if value is None else f"{value:.3g}x"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None or not value else f"{value:.3g} ms"


def fmt_loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}%"


def config_summary(config: dict[str, Any] | None) -> str:
    """A config dict as "structured ratio=0.5 (criterion=l1, scope=global, ...)": its set fields, type omitted."""
    if not config:
        return "none"
    unused = {"type", "modules"} | ({"n", "m"} if config.get("kind", "n:m") != "n:m" else set())  # N:M fields
    fields = {k: v for k, v in config.items() if k not in unused and v is not None}
    head = str(fields.pop("kind", fields.pop("method", config.get("type", "?"))))
    return head + (" " + ", ".join(f"{k}={v}" for k, v in fields.items()) if fields else "")


def distill_summary(plan: dict[str, Any]) -> str:
    """" (lr=0.002, temperature=4, alpha=0.9, augment=...)" from the plan's distillation fields ("" if none)."""
    fields = [(k, plan[k]) for k in ("lr", "temperature", "alpha", "augment") if plan.get(k) is not None]
    return f" ({', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in fields)})" if fields else ""


def layer_changes(report: dict[str, Any]) -> dict[str, str]:
    """Per layer name, what the steps did to it ("; "-joined) or why they left it ("skipped: ...")."""
    changes: dict[str, list[str]] = {}
    for step in report["steps"]:
        for name, what in (step.get("changed") or {}).items():
            changes.setdefault(name, []).append(str(what))
        for name, why in (step.get("skipped") or {}).items():
            changes.setdefault(name, []).append(f"skipped: {why}")
    return {name: "; ".join(parts) for name, parts in changes.items()}


def accuracy_drop(report: dict[str, Any]) -> float | None:
    acc = report["accuracy"]
    return None if acc.get("before") is None or acc.get("after") is None else acc["before"] - acc["after"]


def trajectory_chart(report: dict[str, Any]) -> str:
    """Top-1 accuracy after each stage (x: stage index) with the budget floor, as inline SVG ("" if no accuracy)."""
    stages = report["trajectory"]
    points = [(float(i), t["accuracy"] / 100.0) for i, t in enumerate(stages) if t.get("accuracy") is not None]
    if not points:
        return ""
    series = {"top-1 accuracy": points}
    budget = (report.get("plan") or {}).get("max_accuracy_drop")
    before = report["accuracy"].get("before")
    if budget is not None and before is not None:
        floor = max(0.0, (before - budget) / 100.0)
        series[f"budget floor {100 * floor:.1f}%"] = [(0.0, floor), (float(len(stages) - 1), floor)]
    return line_chart(series, "accuracy through compression", "stage (0 = original; see the table)", "top-1")


def _cells(row: dict[str, Any]) -> str:
    out = []
    for metric in METRICS:
        before, after = row.get(f"{metric}_before"), row.get(f"{metric}_after")
        shown = (fmt_ms(before), fmt_ms(after)) if metric == "ms" else (si(before), si(after))
        out.append(f"<td>{shown[0]} → {shown[1]}</td><td>{fmt_ratio(ratio(before, after))}</td>")
    return "".join(out)


def render_compress_section(report: dict[str, Any]) -> str:
    """The compression section as an HTML fragment (one <section> element) for report.html."""
    check_report(report, "render_compress_section")
    esc = html.escape
    plan, acc, totals = report.get("plan") or {}, report["accuracy"], report["totals"]
    drop = accuracy_drop(report)
    facts = [f"prune: {esc(config_summary(plan.get('prune')))}",
             f"decompose: {esc(config_summary(plan.get('decompose')))}",
             f"distillation: {int(plan.get('distill_epochs') or 0)} epoch(s)" + esc(distill_summary(plan))]  # fmt: skip
    if plan.get("max_accuracy_drop") is not None:
        facts.append(f"budget: at most {plan['max_accuracy_drop']:g} points lost")
    if report.get("seconds") is not None:
        facts.append(f"took {report['seconds']:.1f} s")
    before, after = totals["before"], totals["after"]
    speedup = ratio(after.get("ms"), before.get("ms"))
    summary = (f"accuracy {fmt_pct(acc.get('before'))} → {fmt_pct(acc.get('after'))}"
               + (f" (drop {drop:.2f} points)" if drop is not None else " (no labelled data)")
               + f"; MACs {si(before.get('macs'))} → {si(after.get('macs'))} "
               f"({fmt_ratio(ratio(before.get('macs'), after.get('macs')))}); params {si(before.get('params'))} → "
               f"{si(after.get('params'))} ({fmt_ratio(ratio(before.get('params'), after.get('params')))}); "
               f"measured latency {fmt_ms(before.get('ms'))} → {fmt_ms(after.get('ms'))}"
               + (f" ({speedup:.2f}x faster)" if speedup else ""))  # fmt: skip
    changes = layer_changes(report)
    head = ("<tr><th>layer</th><th>MACs</th><th>ratio</th><th>params</th><th>ratio</th><th>latency</th>"
            "<th>ratio</th><th>what changed</th></tr>")  # fmt: skip
    rows = "".join(
        f"<tr class='{'changed' if row.get('macs_after') != row.get('macs_before') else 'same'}'>"
        f"<td>{esc(str(row['name']))}</td>{_cells(row)}<td class='what'>{esc(changes.get(row['name'], '-'))}</td></tr>"
        for row in report["layers"]
    )  # fmt: skip
    total = {**{f"{k}_before": before.get(k) for k in METRICS}, **{f"{k}_after": after.get(k) for k in METRICS}}
    total_row = f"<tr class='total'><td><b>total</b></td>{_cells(total)}<td></td></tr>"
    parts = ["<section class='compress' id='compression'><h2>Compression: prune, decompose, distill</h2>",
             f"<p class='note'>{'; '.join(facts)}</p>", f"<p class='summary'>{summary}</p>",
             "<h3>Per layer, before → after (ratio = after / before; latency measured at the example batch)</h3>",
             f"<table class='compress-layers'>{head}{rows}{total_row}</table>"]  # fmt: skip
    chart = trajectory_chart(report)
    stage_rows = "".join(
        f"<tr><td>{i}</td><td>{esc(str(t['stage']))}</td><td>{fmt_pct(t.get('accuracy'))}</td>"
        f"<td>{fmt_loss(t.get('loss'))}</td></tr>"
        for i, t in enumerate(report["trajectory"])
    )  # fmt: skip
    parts.append(f"<h3>Accuracy trajectory</h3><div class='chart' id='chart-compress'>{chart}</div>"
                 "<table class='trajectory'><tr><th>#</th><th>stage</th><th>top-1</th><th>training loss</th></tr>"
                 f"{stage_rows}</table>")  # fmt: skip
    for step in report["steps"]:
        config = step.get("config") or {}
        parts.append(f"<h3>{esc(str(config.get('type', 'step')))}: {esc(config_summary(config))}</h3>"
                     f"<p class='note'>{len(step.get('changed') or {})} module(s) changed, "
                     f"{len(step.get('skipped') or {})} left alone</p>")  # fmt: skip
        notes = step.get("notes") or []
        if notes:
            parts.append("<ul class='notes'>" + "".join(f"<li>{esc(str(n))}</li>" for n in notes) + "</ul>")
        skipped = step.get("skipped") or {}
        if skipped:
            items = "".join(f"<li><b>{esc(str(n))}</b>: {esc(str(why))}</li>" for n, why in skipped.items())
            parts.append(f"<p>Skipped layers and why:</p><ul class='skipped'>{items}</ul>")
    parts.append("</section>")
    return "".join(parts)


__all__ = ["config_summary", "fmt_ratio", "layer_changes", "ratio", "render_compress_section", "si",
           "trajectory_chart"]  # fmt: skip
