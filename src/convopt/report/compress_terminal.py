"""Rich terminal table of compress()'s report dict (keys as in convopt.report.compress_html)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from convopt.report.compress_html import (
    METRICS, accuracy_drop, check_report, config_summary, distill_summary, fmt_loss, fmt_ms, fmt_pct, fmt_ratio,
    layer_changes, ratio, si,
)  # fmt: skip


def _cells(values: dict[str, Any]) -> list[str]:
    """before -> after and after/before for MACs, params and ms (the row dict's *_before / *_after keys)."""
    cells = []
    for metric in METRICS:
        before, after = values.get(f"{metric}_before"), values.get(f"{metric}_after")
        show = fmt_ms if metric == "ms" else si
        cells += [f"{show(before)} -> {show(after)}", fmt_ratio(ratio(before, after))]
    return cells


def trajectory_line(report: dict[str, Any]) -> str:
    """"original 98.50% -> pruned 10.00% -> distill epoch 1 95.00% (loss 0.21) -> ..."."""
    parts = []
    for stage in report["trajectory"]:
        loss = f" (loss {fmt_loss(stage['loss'])})" if stage.get("loss") is not None else ""
        parts.append(f"{stage['stage']} {fmt_pct(stage.get('accuracy'))}{loss}")
    return " -> ".join(parts)


def compress_table(report: dict[str, Any]) -> Table:
    """One row per conv/linear layer (MACs, params, measured ms: before -> after, after/before; what changed),
    a total row, and a caption with the accuracy trajectory, the budget and the layers left alone and why."""
    check_report(report, "compress_table")
    plan, acc, totals = report.get("plan") or {}, report["accuracy"], report["totals"]
    drop = accuracy_drop(report)
    title = f"compression: prune {config_summary(plan.get('prune'))}; decompose {config_summary(plan.get('decompose'))}"
    if plan.get("distill_epochs"):
        title += f"; distill {plan['distill_epochs']} epoch(s){distill_summary(plan)}"
    table = Table(title=title, header_style="bold")
    for column in ("layer", "MACs", "ratio", "params", "ratio", "latency", "ratio", "what changed"):
        table.add_column(column, justify="left" if column in ("layer", "what changed") else "right",
                         overflow="fold")  # fmt: skip
    changes = layer_changes(report)
    for row in report["layers"]:
        style = None if row.get("macs_after") != row.get("macs_before") else "dim"
        table.add_row(str(row["name"]), *_cells(row), changes.get(row["name"], "-"), style=style)
    before, after = totals["before"], totals["after"]
    total = {**{f"{k}_before": before.get(k) for k in METRICS}, **{f"{k}_after": after.get(k) for k in METRICS}}
    table.add_section()
    table.add_row("total", *_cells(total), "", style="bold")
    budget = plan.get("max_accuracy_drop")
    if drop is None:
        verdict = " (no labelled data)"
    else:
        verdict = f" (drop {drop:.2f} points" + (f", budget {budget:g})" if budget is not None else ")")
    lines = [f"accuracy {fmt_pct(acc.get('before'))} -> {fmt_pct(acc.get('after'))}{verdict}",
             "trajectory: " + trajectory_line(report),
             "ratio = after / before; latency measured at the example batch"]  # fmt: skip
    for step in report["steps"]:
        lines += [str(note) for note in step.get("notes") or []]
    table.caption = "\n".join(lines)
    return table


__all__ = ["compress_table", "trajectory_line"]
