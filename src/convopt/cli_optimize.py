"""`convopt optimize`: argument parsing, progress and output files; the work is in convopt.optimize."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from torch import nn

DEFAULT_OUT = "convopt-out"


def add_parser(commands: Any, positive_int: Any) -> None:
    p = commands.add_parser("optimize", help="tune, transform, verify and save a faster model with a report")
    p.add_argument("model", nargs="?", default=None, help="as in `analyze`; default: the embedded MNIST CNN")
    p.add_argument("--weights", help="a .safetensors file (or a plain tensor state dict saved with torch.save)")
    p.add_argument("--data", help="mnist, digits or imagefolder:PATH (accuracy before and after)")
    p.add_argument("--input-shape", help="e.g. 8,3,224,224 (default: the model's, at --batch)")
    p.add_argument("--batch", type=positive_int, default=None, help="batch size to optimize for (default 8)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument("--budget-error", type=float, default=1e-5, help="max normwise error per conv algorithm")
    p.add_argument("--max-rel-error", type=float, default=1e-4, help="max relative output change of the model")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=positive_int, default=7, help="timed runs per candidate (median)")
    p.add_argument("--no-compare", action="store_true", help="skip the torch.compile and ONNX Runtime comparison")
    p.add_argument("--no-graph-passes", action="store_true", help="tune layers only (for models fx cannot trace)")
    p.add_argument("--json", metavar="PATH|-", help="also write report.json here ('-' for stdout)")


def _portable_source(model: str | None) -> str | None:
    """MODEL as the recipe should record it: file paths made absolute, so loading works from any folder."""
    if not model or model.startswith("torchvision:"):
        return model
    location, colon, attribute = model.rpartition(":")
    if colon and location.endswith(".py"):
        return f"{Path(location).resolve()}:{attribute}"
    return str(Path(model).resolve()) if Path(model).exists() else model


def _writers(result: Any, report: dict[str, Any], hardware: Any, inputs: torch.Tensor, original: Any) -> dict:
    from convopt.report.optimize_html import render
    from convopt.transforms.backend import export_onnx

    notes: list[str] = report["notes"]

    def write_pt2(path: Path) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.export.save(torch.export.export(result.model, (inputs,)), str(path))
        except Exception as exc:  # the optimized graph may hold ops export cannot capture: say so
            notes.append(f"model.pt2 not written: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")

    def write_onnx(path: Path) -> None:
        try:
            export_onnx(original, (inputs,), path)
            notes.append("model.onnx is the original architecture exported for portable runtimes")
        except Exception as exc:  # export failures are reported, not fatal
            notes.append(f"model.onnx not written: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")

    return {
        "model.pt2": write_pt2,
        "model.onnx": write_onnx,
        "report.json": lambda path: path.write_text(json.dumps(report, indent=2), encoding="utf-8"),
        "report.html": lambda path: path.write_text(render(report, hardware), encoding="utf-8"),
    }


def run(args: argparse.Namespace, console: Console) -> int:
    from convopt.analysis.hardware import load_or_measure
    from convopt.api import example_input
    from convopt.artifacts import check_writable, save_optimized
    from convopt.data import load_data
    from convopt.loading import load_model, load_weights, parse_input_shape
    from convopt.optimize import optimize

    out = Path(args.out)
    check_writable(out)  # fail before minutes of tuning, not after
    loaded = load_model(args.model)
    if args.weights:
        load_weights(loaded.model, args.weights)
    shape = list(parse_input_shape(args.input_shape) if args.input_shape else loaded.input_shape)
    shape[0] = args.batch or (shape[0] if args.input_shape else 8)
    x = example_input(shape)
    data = load_data(args.data, input_shape=shape) if args.data else None
    hardware = load_or_measure(args.threads, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    convs = sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in loaded.model.modules())
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bars:  # fmt: skip
        stage = bars.add_task("optimizing", total=None)
        tuning = bars.add_task("tuning conv layers", total=convs)
        evaluating = bars.add_task("evaluating", total=None, visible=data is not None)

        def on_message(message: str) -> None:
            bars.update(stage, description=message)
            if message.startswith("tuning "):
                bars.advance(tuning)

        def on_batch(done: int, total: int) -> None:
            bars.update(evaluating, completed=done, total=total)

        result = optimize(loaded.model, x, name=loaded.name, data=data, budget_error=args.budget_error,
                          max_rel_error=args.max_rel_error, threads=args.threads, repeats=args.repeats,
                          compare_backends=not args.no_compare, graph_passes=not args.no_graph_passes,
                          progress=on_message, on_batch=on_batch)  # fmt: skip
    report = result.report.to_dict()
    report["hardware"] = hardware.to_dict()
    with console.status(f"writing {out}"):
        save_optimized(result.model, out, source=_portable_source(args.model), input_shape=shape, config=result.recipe,
                       original=loaded.model,
                       extra_files=_writers(result, report, hardware, x, loaded.model),
                       recipe_extra={"threads": report["threads"]})  # fmt: skip
    _print_summary(report, out, console)
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            from convopt.io import atomic_write_text

            atomic_write_text(args.json, text)
    return 0


def _print_summary(report: dict[str, Any], out: Path, console: Console) -> None:
    from rich.table import Table

    lat, acc = report["latency_ms"], report["accuracy"]
    table = Table(title=f"convopt optimize: {report['model']} (batch {lat['batch']}, {report['threads']} threads)")
    for column in ("backend", "latency", "vs eager", "max rel. error"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for name, entry in report["backends"].items():
        if entry.get("ms") is None:
            table.add_row(name, "-", "-", f"unavailable: {entry.get('unavailable')}")
            continue
        error = report["max_rel_error"] if name == "convopt" else entry.get("max_rel_error")
        table.add_row(name, f"{entry['ms']:.3f} ms", f"{entry['speedup_vs_eager']:.2f}x",
                      f"{error:.1e}" if error is not None else "-", style="bold" if name == report["fastest"] else None)  # fmt: skip
    console.print(table)
    chosen = {}
    for layer in report["layers"]:
        chosen[layer["algorithm"]] = chosen.get(layer["algorithm"], 0) + 1
    console.print(f"layers: {', '.join(f'{n} x{c}' for n, c in chosen.items())}; "
                  f"tuning cache hits {report['tuning'].get('cache_hits', 0)}/{len(report['layers'])}", highlight=False)  # fmt: skip
    if acc["before"] is not None:
        console.print(f"accuracy: {acc['before']:.2f}% -> {acc['after']:.2f}%", highlight=False)
    size = report["size_bytes"]
    console.print(f"size: {size['before'] / 1e6:.3f} MB -> {size['after'] / 1e6:.3f} MB", highlight=False)
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print(f"wrote {out}/ (model.safetensors, recipe.json, report.json, report.html, exports)", highlight=False)
