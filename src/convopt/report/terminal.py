"""Rich terminal rendering of a CostReport."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from convopt.analysis.cost import CostReport


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (SI prefixes, three significant digits)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _shape(shape: list[int] | None) -> str:
    return "x".join(str(s) for s in shape) if shape else "-"


def cost_table(report: CostReport) -> Table:
    measured = any(layer.seconds is not None for layer in report.layers)
    table = Table(title=f"{report.model}  input {_shape(report.input_shape)}", header_style="bold")
    for column in ("layer", "kind", "output", "MACs", "other ops", "params", "MAC/B", "bound"):
        table.add_column(column, justify="left" if column in ("layer", "kind", "output", "bound") else "right")
    if measured:
        for column in ("time", "GMAC/s", "GB/s", "% roof"):
            table.add_column(column, justify="right")
    for layer in report.layers:
        row = [layer.name, layer.kind, _shape(layer.output_shape), human(layer.macs), human(layer.other_ops),
               human(layer.params),
               f"{layer.arithmetic_intensity:.2f}" if layer.macs else "-", layer.bound or "-"]  # fmt: skip
        if measured:
            row += [
                f"{(layer.seconds or 0) * 1e3:.3f} ms",
                f"{layer.measured_gmacs_per_s:.1f}" if layer.measured_gmacs_per_s else "-",
                f"{layer.measured_gb_per_s:.1f}" if layer.measured_gb_per_s else "-",
                f"{100 * layer.roofline_fraction:.0f}%" if layer.roofline_fraction is not None else "-",
            ]
        table.add_row(*row)
    return table


def summary_lines(report: CostReport) -> list[str]:
    totals = report.totals()
    lines = [
        f"total: {human(totals['macs'])} MACs ({totals['macs']:,}) = {human(totals['flops'])} FLOPs, "
        f"{human(totals['params'])} params ({totals['params']:,}), {human(totals['other_ops'])} other ops, "
        f"{human(totals['activation_bytes'], 'B')} activations"
    ]
    hw = report.hardware
    if hw is not None:
        peaks = ", ".join(f"{k} {v:.0f} G{'OP' if k == 'int8' else 'FLOP'}/s" for k, v in hw.peak_gflops.items())
        lines.append(
            f"machine: {hw.fingerprint.get('cpu_model')}, {hw.threads} threads; measured peak {peaks}; "
            f"bandwidth {hw.bandwidth_gbs:.1f} GB/s; fp32 ridge {hw.ridge_point('float32'):.1f} MAC/B"
        )
    if report.latency_seconds is not None:
        macs_rate = report.macs / report.latency_seconds / 1e9
        peak = hw.peak_macs_per_s() / 1e9 if hw is not None else float("nan")
        lines.append(
            f"latency: {report.latency_seconds * 1e3:.3f} ms (median), {macs_rate:.1f} GMAC/s "
            f"= {100 * macs_rate / peak:.0f}% of the fp32 GEMM peak"
        )
    if report.energy is not None:
        e = report.energy
        lines.append(
            f"energy: {e.joules_per_inference * 1e3:.3g} mJ/inference, {e.grams_co2_per_inference * 1e6:.3g} ug CO2 "
            f"at {e.grid_g_per_kwh:g} g/kWh [{e.method}: {e.assumption}]"
        )
    lines.extend(f"note: {note}" for note in report.notes)
    return lines


def print_cost_report(report: CostReport, console: Console | None = None) -> None:
    console = console or Console()
    console.print(cost_table(report))
    for line in summary_lines(report):
        console.print(line, highlight=False, markup=False)
