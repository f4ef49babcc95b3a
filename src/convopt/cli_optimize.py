"""`convopt optimize`: argument parsing, progress and output files; the work is in convopt.optimize."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from torch import nn

from convopt.io import strict_json

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
    _add_compress_arguments(p)
    _add_quantize_arguments(p, positive_int)


def _add_compress_arguments(p: Any) -> None:
    c = p.add_argument_group("compression (before tuning; judged by accuracy on --data)")
    c.add_argument("--prune", metavar="SPEC", help="structured:RATIO (MACs removed), unstructured:RATIO or N:M (e.g. 2:4)")
    c.add_argument("--decompose", metavar="SPEC", help="tucker:MAC_RATIO[:latency] (MACs kept; :latency spends them where "
                   "measured time drops most), tucker:vbmf, cp:RANK, svd:ENERGY or svd:vbmf")
    c.add_argument("--distill", type=int, default=0, metavar="EPOCHS",
                   help="fine-tune the compressed model against the original by knowledge distillation")  # fmt: skip
    c.add_argument("--max-accuracy-drop", type=float, default=None, metavar="P",
                   help="allowed top-1 loss in points on --data (default 1.0)")  # fmt: skip


def _add_quantize_arguments(p: Any, positive_int: Any) -> None:
    q = p.add_argument_group("INT8 quantization")
    q.add_argument("--quantize", choices=["int8"], help="quantize to INT8 and run on the fastest measured engine")
    q.add_argument("--calibration", type=positive_int, default=256, metavar="N",
                   help="calibration samples, drawn from the training split of --data (default 256)")  # fmt: skip
    q.add_argument("--qat", type=int, default=0, metavar="EPOCHS",
                   help="quantization-aware fine-tuning epochs first (checkpointed in the cache: a killed run resumes)")  # fmt: skip
    if "--max-accuracy-drop" not in p._option_string_actions:  # shared with other accuracy-budgeted steps
        q.add_argument("--max-accuracy-drop", type=float, default=None, metavar="P",
                       help="allowed top-1 loss in points on --data (default 1.0)")  # fmt: skip
    q.add_argument("--observer", default="minmax", choices=["minmax", "moving_average", "percentile", "mse", "entropy"],
                   help="activation range observer for calibration (default minmax)")  # fmt: skip


def _portable_source(model: str | None) -> str | None:
    """MODEL as the recipe should record it: file paths made absolute, so loading works from any folder."""
    if not model or model.startswith("torchvision:"):
        return model
    location, colon, attribute = model.rpartition(":")
    if colon and location.endswith(".py"):
        return f"{Path(location).resolve()}:{attribute}"
    return str(Path(model).resolve()) if Path(model).exists() else model


def _compress_options(args: argparse.Namespace, model: nn.Module, shape: list[int]) -> dict[str, Any]:
    """The CompressionPlan from --prune/--decompose/--distill, with training and held-out data ({} without)."""
    from convopt.compress_flow import CompressionPlan, training_split
    from convopt.errors import ConfigError
    from convopt.quantize_flow import qat_checkpoint_dir

    if args.distill < 0:
        raise ConfigError(f"--distill {args.distill}: give a number of epochs >= 0")
    plan = CompressionPlan.from_cli(args.prune, args.decompose, args.distill, args.max_accuracy_drop)
    if plan is None:
        return {}
    if not args.data:
        raise ConfigError("--prune/--decompose/--distill need --data: labelled data to fine-tune and to check accuracy")
    train, held_out = training_split(args.data, shape)
    folder = qat_checkpoint_dir(model, data=args.data, plan=repr(plan)) if plan.distill_epochs else None
    return {"plan": plan, "train_data": train, "data": held_out, "checkpoint_dir": folder}


def _quantize_options(args: argparse.Namespace, model: nn.Module, shape: list[int]) -> dict[str, Any]:
    """quantize_model keyword arguments from the command line (calibration, held-out and training data)."""
    from convopt.errors import ConfigError
    from convopt.quantize_flow import calibration_split, qat_checkpoint_dir

    if not args.data:
        raise ConfigError("--quantize int8 needs --data: calibration inputs and held-out labels for the accuracy budget")
    if args.qat < 0:
        raise ConfigError(f"--qat {args.qat}: give a number of epochs >= 0")
    calibration, held_out, train = calibration_split(args.data, shape, args.calibration)
    drop = 1.0 if args.max_accuracy_drop is None else args.max_accuracy_drop
    options: dict[str, Any] = {"calibration": calibration, "data_eval": held_out, "max_accuracy_drop": drop,
                               "observer": args.observer, "qat_epochs": args.qat}  # fmt: skip
    if args.qat:
        options["train_data"] = train
        options["checkpoint_dir"] = qat_checkpoint_dir(model, data=args.data, calibration=args.calibration,
                                                       epochs=args.qat, observer=args.observer)  # fmt: skip
    return options


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

    writers = {
        "model.pt2": write_pt2,
        "model.onnx": write_onnx,
        "report.json": lambda path: path.write_text(strict_json(report), encoding="utf-8"),
        "report.html": lambda path: path.write_text(render(report, hardware), encoding="utf-8"),
    }
    sections: list[Callable[[], str]] = []
    if report.get("compression"):
        from convopt.report.compress_html import render_compress_section

        sections.append(lambda: render_compress_section(report["compression"]))
    if report.get("quantization"):
        from convopt.report.quant_html import render_quant_section

        # the INT8 engine runs an ONNX graph (model.int8.onnx, written by save_optimized): no torch.export of it
        del writers["model.pt2"]
        notes.append("model.int8.onnx is the deployed INT8 graph (QDQ ONNX), run by OpenVINO or ONNX Runtime")
        sections.append(lambda: render_quant_section(report["quantization"]))
    if sections:
        writers["report.html"] = lambda path: path.write_text(
            render(report, hardware).replace("</body>", "".join(section() for section in sections) + "</body>", 1),
            encoding="utf-8")  # fmt: skip
    return writers


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

        compression = _compress_options(args, loaded.model, shape)
        if compression.get("train_data") is not None:
            data = compression["data"]
        quantize = _quantize_options(args, loaded.model, shape) if args.quantize else None
        if quantize is not None:
            data = quantize.pop("data_eval")
        result = optimize(loaded.model, x, name=loaded.name, data=data, budget_error=args.budget_error,
                          max_rel_error=args.max_rel_error, threads=args.threads, repeats=args.repeats,
                          compare_backends=not args.no_compare, graph_passes=not args.no_graph_passes,
                          progress=on_message, on_batch=on_batch, quantize=quantize,
                          compression=compression.get("plan"), train_data=compression.get("train_data"),
                          checkpoint_dir=compression.get("checkpoint_dir"))  # fmt: skip
    report = result.report.to_dict()
    report["hardware"] = hardware.to_dict()
    with console.status(f"writing {out}"):
        save_optimized(result.model, out, source=_portable_source(args.model), input_shape=shape, config=result.recipe,
                       original=loaded.model,
                       extra_files=_writers(result, report, hardware, x, loaded.model),
                       recipe_extra={"threads": report["threads"]})  # fmt: skip
    _print_summary(report, out, console)
    if args.json:
        text = strict_json(report)
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
    # After compression, "eager" is the compressed model in PyTorch: compare against the untouched original.
    key, label = ("speedup_vs_original", "vs original") if "original" in report["backends"] else ("speedup_vs_eager", "vs eager")
    for column in ("backend", "latency", label, "max rel. error"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for name, entry in report["backends"].items():
        if entry.get("ms") is None:
            table.add_row(name, "-", "-", f"unavailable: {entry.get('unavailable')}")
            continue
        error = report["max_rel_error"] if name == "convopt" else entry.get("max_rel_error")
        table.add_row(name, f"{entry['ms']:.3f} ms", f"{entry[key]:.2f}x",
                      f"{error:.1e}" if error is not None else "-", style="bold" if name == report["fastest"] else None)  # fmt: skip
    console.print(table)
    chosen = {}
    for layer in report["layers"]:
        chosen[layer["algorithm"]] = chosen.get(layer["algorithm"], 0) + 1
    if report.get("compression"):
        from convopt.report.compress_terminal import compress_table

        console.print(compress_table(report["compression"]))
    if report.get("quantization"):
        from convopt.report.quant_terminal import quant_table

        console.print(quant_table(report["quantization"]))
    else:
        console.print(f"layers: {', '.join(f'{n} x{c}' for n, c in chosen.items())}; "
                      f"tuning cache hits {report['tuning'].get('cache_hits', 0)}/{len(report['layers'])}", highlight=False)  # fmt: skip
    if acc["before"] is not None:
        console.print(f"accuracy: {acc['before']:.2f}% -> {acc['after']:.2f}%", highlight=False)
    size = report["size_bytes"]
    console.print(f"size: {size['before'] / 1e6:.3f} MB -> {size['after'] / 1e6:.3f} MB", highlight=False)
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print(f"wrote {out}/ (model.safetensors, recipe.json, report.json, report.html, exports)", highlight=False)
