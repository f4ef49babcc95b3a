"""Command line: argument parsing and rendering only; the work happens in convopt.api."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from rich.console import Console

from convopt.analysis.energy import DEFAULT_GRID_G_PER_KWH, DEFAULT_WATTS_PER_CORE
from convopt.errors import ConvoptError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"convopt: error: {message} (see convopt {self.prog.split()[-1]} --help)\n")
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="convopt", description="Fast, small and trustworthy convolutions for PyTorch models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    analyze = commands.add_parser("analyze", help="exact cost of every layer, placed on this machine's roofline")
    analyze.add_argument("model", nargs="?", default=None,
                         help="torchvision:NAME, file.py:callable, package.module:callable, TorchScript or .pt2 "
                              "file; default: the embedded MNIST CNN")  # fmt: skip
    analyze.add_argument("--input-shape", help="e.g. 1,3,224,224 (default: from the weights metadata or the model)")
    analyze.add_argument("--pretrained", action="store_true", help="torchvision weights, if on disk (no downloads)")
    analyze.add_argument("--measure", action="store_true", help="time every layer and report %% of the roofline")
    analyze.add_argument("--repeats", type=_positive_int, default=7, help="timed passes for --measure (median)")
    analyze.add_argument("--threads", type=_positive_int, default=None, help="intra-op threads (default: torch's)")
    analyze.add_argument("--reprofile", action="store_true", help="re-measure the hardware profile")
    analyze.add_argument("--json", metavar="PATH|-", help="write the report as JSON ('-' for stdout)")
    analyze.add_argument("--plot", metavar="PATH", help="write a roofline chart (.png or .svg)")
    analyze.add_argument("--watts-per-core", type=float, default=DEFAULT_WATTS_PER_CORE,
                         help="declared power per core for the energy estimate when RAPL is not readable")
    analyze.add_argument("--grid-intensity", type=float, default=DEFAULT_GRID_G_PER_KWH,
                         help="grams of CO2 per kWh of the user's electricity grid")
    bench = commands.add_parser("bench", help="every conv algorithm vs PyTorch, side by side, on layer suites")
    bench.add_argument("--suite", choices=["resnet18", "large-kernel", "volumes", "depthwise"], default="resnet18")
    bench.add_argument("--batch", type=_positive_int, default=1)
    bench.add_argument("--threads", type=_positive_int, default=None, help="intra-op threads (default: torch's)")
    bench.add_argument("--repeats", type=_positive_int, default=7, help="timed runs per candidate (median)")
    bench.add_argument("--algorithms", help="comma-separated subset (default: every registered algorithm)")
    bench.add_argument("--sparsity", type=float, default=0.0, help="magnitude-prune the weights to this fraction")
    bench.add_argument("--json", metavar="PATH|-", help="write the results as JSON ('-' for stdout)")
    from convopt import cli_optimize

    cli_optimize.add_parser(commands, _positive_int)
    from convopt import cli_verify

    cli_verify.add_parser(commands, _positive_int)
    return parser


def _write_json(data: dict, target: str, console: Console) -> None:
    from convopt.io import atomic_write_text

    text = json.dumps(data, indent=2)
    if target == "-":
        sys.stdout.write(text + "\n")
    else:
        console.print(f"wrote {atomic_write_text(target, text)}", highlight=False)


def _run_bench(args: argparse.Namespace, console: Console) -> int:
    from convopt.analysis.hardware import load_or_measure
    from convopt.errors import UnsupportedConvError
    from convopt.kernels.registry import ALGORITHMS
    from convopt.report.bench_table import print_bench_report
    from convopt.search.bench import run_bench

    if not 0.0 <= args.sparsity < 1.0:
        raise UnsupportedConvError(f"--sparsity {args.sparsity}: expected a fraction in [0, 1)")
    algorithms = [a.strip() for a in args.algorithms.split(",")] if args.algorithms else None
    for name in algorithms or []:
        if name not in ALGORITHMS:
            raise UnsupportedConvError(f"unknown algorithm {name!r}; registered: {', '.join(ALGORITHMS)}")
    hardware = load_or_measure(args.threads, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    with console.status("benchmarking") as status:
        report = run_bench(args.suite, batch=args.batch, threads=args.threads, repeats=args.repeats,
                           sparsity=args.sparsity, hardware=hardware, algorithms=algorithms,
                           progress=lambda name: status.update(f"benchmarking {name}"))  # fmt: skip
    if args.json != "-":
        print_bench_report(report, console)
    if args.json:
        _write_json(report.to_dict(), args.json, console)
    return 0


def _run_analyze(args: argparse.Namespace, console: Console) -> int:
    from convopt.analysis.hardware import load_or_measure
    from convopt.api import analyze, example_input
    from convopt.loading import load_model, parse_input_shape
    from convopt.report.plot import save_roofline_plot
    from convopt.report.terminal import print_cost_report

    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    loaded = load_model(args.model, pretrained=args.pretrained)
    shape = shape or loaded.input_shape
    log = lambda message: console.print(f"[dim]{message}[/dim]")  # noqa: E731
    hardware = load_or_measure(args.threads, reprofile=True, log=log) if args.reprofile else "auto"
    with console.status(f"analysing {loaded.name}" + (" (measuring every layer)" if args.measure else "")):
        report = analyze(loaded.model, example_input(shape), name=loaded.name, hardware=hardware,
                         measure=args.measure, threads=args.threads, repeats=args.repeats,
                         watts_per_core=args.watts_per_core, grid_g_per_kwh=args.grid_intensity, log=log)  # fmt: skip
    if args.json != "-":
        print_cost_report(report, console)
    if args.json:
        _write_json(report.to_dict(), args.json, console)
    if args.plot:
        console.print(f"wrote {save_roofline_plot(report, args.plot)}", highlight=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `convopt` command; returns the exit code (2 for bad input, with a one-line error)."""
    args = build_parser().parse_args(argv)
    # With --json -, stdout carries only JSON: everything else goes to stderr.
    to_stderr = getattr(args, "json", None) == "-"
    tty = (sys.stderr if to_stderr else sys.stdout).isatty()
    console = Console(stderr=to_stderr, width=None if tty else 160)
    try:
        if args.command == "analyze":
            return _run_analyze(args, console)
        if args.command == "bench":
            return _run_bench(args, console)
        if args.command == "optimize":
            from convopt import cli_optimize

            return cli_optimize.run(args, console)
        if args.command == "verify":
            from convopt import cli_verify

            return cli_verify.run(args, console)
    except ConvoptError as exc:
        sys.stderr.write(f"convopt: error: {exc}\n".replace("\n", " ").rstrip() + "\n")
        return 2
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
