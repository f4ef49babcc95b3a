"""Roofline chart: one point per layer against this machine's measured roof."""

from __future__ import annotations

import io
from pathlib import Path

from convopt.analysis.cost import CostReport
from convopt.errors import ConvoptError
from convopt.io import atomic_write_bytes


def roofline_figure_bytes(report: CostReport, fmt: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hw = report.hardware
    if hw is None:
        raise ConvoptError("a roofline plot needs a hardware profile")
    layers = [layer for layer in report.layers if layer.macs]
    if not layers:
        raise ConvoptError(f"{report.model} has no conv/linear/matmul layers to place on a roofline")
    peak = hw.peak_macs_per_s("float32") / 1e9
    bandwidth = hw.bandwidth_gbs
    intensities = [layer.arithmetic_intensity for layer in layers]
    low, high = min(intensities + [hw.ridge_point()]) / 4, max(intensities + [hw.ridge_point()]) * 4
    xs = [low * (high / low) ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    ax.plot(xs, [min(peak, x * bandwidth) for x in xs], color="black", lw=2,
            label=f"roof: {peak:.0f} GMAC/s fp32, {bandwidth:.1f} GB/s")  # fmt: skip
    if "bf16" in hw.peak_gflops:
        bf16 = hw.peak_macs_per_s("bfloat16") / 1e9
        ax.plot(xs, [min(bf16, x * bandwidth) for x in xs], color="grey", ls="--", lw=1, label=f"bf16 roof {bf16:.0f}")
    measured = all(layer.measured_gmacs_per_s for layer in layers)
    ys = [layer.measured_gmacs_per_s if measured else layer.attainable_gmacs_per_s for layer in layers]
    colours = ["tab:red" if layer.bound == "memory" else "tab:blue" for layer in layers]
    ax.scatter(intensities, ys, c=colours, s=22, zorder=3, edgecolors="none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs per byte moved)")
    ax.set_ylabel(("measured" if measured else "attainable") + " rate (GMAC/s)")
    ax.set_title(f"{report.model}: {len(layers)} layers (blue compute-bound, red memory-bound)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def save_roofline_plot(report: CostReport, path: str | Path) -> Path:
    """Write the roofline chart as PNG or SVG (chosen by the file extension), atomically."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ConvoptError(f"--plot {path}: use a .png or .svg file name")
    return atomic_write_bytes(path, roofline_figure_bytes(report, fmt))
