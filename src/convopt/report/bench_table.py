"""Rich terminal rendering of a BenchReport."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from convopt.search.bench import BenchReport


def bench_table(report: BenchReport) -> Table:
    hw = report.hardware
    table = Table(
        title=f"convopt bench --suite {report.suite}: fp32, batch {report.batch}, {report.threads} threads, "
        f"median of {report.repeats} interleaved runs"
        + (f", weights {100 * report.sparsity:.0f}% sparse" if report.sparsity else ""),
        header_style="bold",
    )
    for column in ("layer", "algorithm", "time", "vs PyTorch", "GFLOP/s", "% peak", "error"):
        table.add_column(column, justify="left" if column in ("layer", "algorithm") else "right")
    for case in report.cases:
        table.add_row(case.case, "PyTorch F.conv", f"{case.pytorch_seconds * 1e3:.3f} ms", "1.00x",
                      f"{2 * case.macs / case.pytorch_seconds / 1e9:.1f}",
                      f"{100 * 2 * case.macs / case.pytorch_seconds / 1e9 / hw.peak_gflops['fp32']:.0f}%", "-",
                      end_section=False)  # fmt: skip
        for c in case.candidates:
            if c.skipped:
                table.add_row("", c.algorithm, "-", "-", "-", "-", f"skipped: {c.skipped}")
                continue
            style = "green" if c.speedup_vs_pytorch >= 1.0 else None
            table.add_row("", c.algorithm, f"{c.seconds * 1e3:.3f} ms", f"{c.speedup_vs_pytorch:.2f}x",
                          f"{c.gflops:.1f}", f"{c.percent_of_peak:.0f}%", f"{c.normwise_error:.1e}",
                          style=style)  # fmt: skip
        table.add_section()
    return table


def print_bench_report(report: BenchReport, console: Console | None = None) -> None:
    console = console or Console()
    console.print(bench_table(report))
    hw = report.hardware
    console.print(
        f"roofline: measured fp32 GEMM peak {hw.peak_gflops['fp32']:.0f} GFLOP/s, bandwidth {hw.bandwidth_gbs:.1f} GB/s "
        f"({hw.fingerprint.get('cpu_model')}); error is normwise vs float64",
        highlight=False,
    )
