"""Rich terminal rendering of a VerifyReport."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from convopt.verify.report import VerifyReport


def _num(value: float, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def numerics_table(report: VerifyReport) -> Table:
    numerics = report.numerics
    table = Table(title=f"layer numerics (tolerance: SQNR >= {numerics.min_sqnr_db:g} dB, no new NaN/Inf)",
                  header_style="bold")  # fmt: skip
    for column in ("layer", "matched", "kind", "max |err|", "rel L2", "SQNR dB", "cosine", "NaN/Inf", "drift"):
        table.add_column(column, justify="left" if column in ("layer", "matched", "kind", "drift") else "right")
    for layer in numerics.layers:
        first = layer.name == numerics.first_failing
        style = "bold red" if first else ("red" if not layer.passed else None)
        name = layer.name if layer.candidate_name == layer.name else f"{layer.name} -> {layer.candidate_name}"
        table.add_row(name + ("  <- first failure" if first else ""), layer.matched_by, layer.kind,
                      _num(layer.max_abs_error), _num(layer.rel_l2_error), _num(layer.sqnr_db, 4),
                      f"{layer.cosine:.6f}", f"{layer.nan_count}/{layer.inf_count}", ", ".join(layer.drift) or "-",
                      style=style)  # fmt: skip
    return table


def accuracy_table(report: VerifyReport) -> Table:
    accuracy = report.accuracy
    table = Table(title=f"accuracy on {accuracy.num_samples} samples  (top-1 agreement {_pct(accuracy.agreement)})",
                  header_style="bold")  # fmt: skip
    for column in ("model", "top-1", f"top-{accuracy.k}"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for role, part in (("reference", accuracy.reference), ("candidate", accuracy.candidate)):
        table.add_row(getattr(report, role), _pct(part.top1), _pct(part.topk))
    return table


def attacks_table(report: VerifyReport) -> Table:
    table = Table(title="robust accuracy (correct on the clean input and under attack)", header_style="bold")
    for column in ("model", "attack", "norm", "clean", "eps", "robust", "max |delta|"):
        table.add_column(column, justify="left" if column in ("model", "attack", "norm") else "right")
    for role, curves in report.attacks.items():
        for curve in curves:
            label = curve.attack + (f" ({curve.steps} steps)" if curve.attack == "pgd" else "")
            label += " via surrogate" if curve.surrogate else ""
            for point in curve.points:
                table.add_row(role, label, curve.norm, _pct(curve.clean_accuracy), f"{point.eps:g}",
                              _pct(point.robust_accuracy), _num(point.max_perturbation, 4))  # fmt: skip
    return table


def smoothing_table(report: VerifyReport) -> Table:
    first = next(iter(report.smoothing.values()))
    title = f"randomized smoothing: sigma {first.sigma:g}, n0 {first.n0}, n {first.n}, alpha {first.alpha:g}"
    table = Table(title=title, header_style="bold")
    radii = [r for r, _ in first.curve][:: max(len(first.curve) // 5, 1)]
    for column in ("model", "samples", "abstain", *(f"r={r:.2g}" for r in radii)):
        table.add_column(column, justify="left" if column == "model" else "right")
    for role, part in report.smoothing.items():
        lookup = dict(part.curve)
        table.add_row(role, str(part.num_samples), _pct(part.abstain_rate), *(_pct(lookup[r]) for r in radii))
    return table


def ibp_table(report: VerifyReport) -> Table:
    table = Table(title="interval bound propagation (certified for every input in the eps-box)", header_style="bold")
    for column in ("model", "eps", "samples", "clean", "certified", "mean bound width"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for role, part in report.ibp.items():
        table.add_row(role, f"{part.eps:g}", str(part.num_samples), _pct(part.clean_accuracy),
                      _pct(part.certified_accuracy), _num(part.mean_bound_width))  # fmt: skip
    return table


def profile_table(report: VerifyReport, top: int = 5) -> Table:
    table = Table(title="profile: slowest layers (torch.profiler, CPU time per forward)", header_style="bold")
    for column in ("model", "forward ms", "layer", "kind", "ms", "share"):
        table.add_column(column, justify="left" if column in ("model", "layer", "kind") else "right")
    for role, part in report.profile.items():
        for rank, layer in enumerate(part.layers[:top]):
            table.add_row(role if rank == 0 else "", f"{part.forward_milliseconds:.3g}" if rank == 0 else "",
                          layer.name, layer.kind, f"{layer.milliseconds:.3g}", _pct(layer.fraction))  # fmt: skip
    return table


def print_verify_report(report: VerifyReport, console: Console) -> None:
    console.print(f"[bold]verify[/bold] {report.candidate} against {report.reference} on {report.data} "
                  f"({report.num_samples} samples, {report.seconds:.1f} s)", highlight=False)  # fmt: skip
    if report.accuracy:
        console.print(accuracy_table(report))
    if report.numerics:
        console.print(numerics_table(report))
        failing = report.numerics.first_failing
        console.print(f"[red]first layer out of tolerance: {failing}[/red]" if failing else
                      "[green]every layer within tolerance[/green]", highlight=False)  # fmt: skip
    if report.attacks:
        console.print(attacks_table(report))
    if report.smoothing:
        console.print(smoothing_table(report))
    if report.ibp:
        console.print(ibp_table(report))
    if report.profile:
        console.print(profile_table(report))
        for role, part in report.profile.items():
            if part.trace_path:
                console.print(f"{role} Chrome trace: {part.trace_path}", highlight=False)
    for warning in report.warnings:
        console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)
    for note in (report.numerics.notes if report.numerics else []) + report.notes:
        console.print(f"[dim]{note}[/dim]", highlight=False)


__all__ = ["print_verify_report"]
