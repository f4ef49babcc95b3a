"""`convopt verify`: argument parsing and rendering; the work happens in convopt.verify.verify_models."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from rich.console import Console

from convopt.errors import ConvoptError


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.01,0.03,0.1, got {text}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def _nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one non-negative number, got {text}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected one non-negative number, got {text}")
    return value


def _valid_range(text: str) -> tuple[float, float] | None:
    if text.lower() == "none":
        return None
    values = _floats(text)
    if len(values) != 2 or not values[0] < values[1]:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with LOW < HIGH (or 'none'), got {text}")
    return values


def add_parser(commands: argparse._SubParsersAction, positive_int: Callable[[str], int] | None = None):
    """Add the `verify` sub-command to `commands` (the sub-parsers of convopt.cli.build_parser)."""
    if positive_int is None:
        from convopt.cli import _positive_int as positive_int
    _positive_int = positive_int

    verify = commands.add_parser("verify", help="numerics, accuracy and robustness of a candidate vs its reference")
    verify.add_argument("reference", nargs="?", default=None,
                        help="MODEL as in analyze (default: the embedded MNIST CNN)")  # fmt: skip
    verify.add_argument("candidate", nargs="?", default=None, help="MODEL to check against the reference")
    verify.add_argument("--data", default="mnist", metavar="SPEC",
                        help="mnist[:test|train|all], digits[:...] or imagefolder:PATH (default: mnist)")  # fmt: skip
    verify.add_argument("--input-shape", help="e.g. 1,3,224,224: the size image folders are resized to")
    verify.add_argument("--pretrained", action="store_true", help="torchvision weights, if on disk (no downloads)")
    verify.add_argument("--trust-code", action="store_true",
        help="let an optimize output folder's recipe run the Python file or module it names (folders you made)")
    verify.add_argument("--max-samples", type=_positive_int, default=1000, help="samples for numerics and accuracy")
    verify.add_argument("--batch-size", type=_positive_int, default=128)
    verify.add_argument("--min-sqnr", type=float, default=40.0, help="per-layer SQNR tolerance in dB (default 40)")
    verify.add_argument("--valid-range", type=_valid_range, default=(0.0, 1.0), metavar="LOW,HIGH|none",
                        help="the valid input range attacks stay in and IBP clips to (default 0,1)")  # fmt: skip
    verify.add_argument("--attacks", help="comma-separated: fgsm,pgd")
    verify.add_argument("--eps", type=_floats, default=(0.01, 0.03, 0.1), help="attack radii (default 0.01,0.03,0.1)")
    verify.add_argument("--norm", choices=["inf", "2"], default="inf", help="attack norm (default inf)")
    verify.add_argument("--pgd-steps", type=_positive_int, default=10)
    verify.add_argument("--pgd-step-size", type=_nonnegative, default=None, help="default 2.5 eps / steps")
    verify.add_argument("--restarts", type=_positive_int, default=1, help="PGD random restarts")
    verify.add_argument("--surrogate", action="store_true",
                        help="attack the candidate with the reference's gradients (for quantized candidates)")
    verify.add_argument("--attack-samples", type=_positive_int, default=256)
    verify.add_argument("--smoothing", type=_nonnegative, metavar="SIGMA", help="certify by randomized smoothing")
    verify.add_argument("--smoothing-n0", type=_positive_int, default=100, help="selection samples (default 100)")
    verify.add_argument("--smoothing-n", type=_positive_int, default=100_000, help="certification samples")
    verify.add_argument("--smoothing-alpha", type=float, default=0.001, help="failure probability (default 0.001)")
    verify.add_argument("--smoothing-samples", type=_positive_int, default=10,
                        help="inputs to certify (each costs n0 + n forward passes per model)")
    verify.add_argument("--ibp", type=_nonnegative, metavar="EPS", help="certify by interval bounds at this eps")
    verify.add_argument("--ibp-samples", type=_positive_int, default=256)
    verify.add_argument("--profile", action="store_true", help="per-layer time with torch.profiler")
    verify.add_argument("--profile-repeats", type=_positive_int, default=5)
    verify.add_argument("--trace", metavar="PATH", help="write the candidate's Chrome trace here (implies --profile)")
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--strict", action="store_true", help="exit code 1 when a layer breaks the tolerance")
    verify.add_argument("--json", metavar="PATH|-", help="write the report as JSON ('-' for stdout)")
    verify.add_argument("--html", metavar="PATH", help="write a self-contained HTML report")
    return verify


def load_models(reference: str | None, candidate: str | None, *, pretrained: bool = False, trust_code: bool = False):
    """(reference, candidate) LoadedModels. With neither given, the embedded default against itself.

    The one place that turns the positional arguments into models: an optimize output folder (reference
    and candidate in one place) plugs in here.
    """
    from convopt.artifacts import is_output_folder, load, load_original, read_recipe
    from convopt.loading import LoadedModel, load_model

    def folder(path: str, original: bool) -> LoadedModel:
        shape = tuple(read_recipe(path)["input_shape"])
        if original:
            return LoadedModel(load_original(path, trust_code=trust_code), f"{path} (original)", shape, "the recipe")
        return LoadedModel(load(path, trust_code=trust_code), f"{path} (optimized)", shape, "the recipe")

    if is_output_folder(reference) and candidate is None:  # `verify out/`: the result against its original
        return folder(reference, original=True), folder(reference, original=False)
    if reference is not None and candidate is None:
        raise ConvoptError(f"verify {reference}: name the CANDIDATE model too (verify REFERENCE CANDIDATE), "
                           "or pass an optimize output folder")  # fmt: skip
    ref = folder(reference, True) if is_output_folder(reference) else load_model(reference, pretrained=pretrained)
    cand = folder(candidate, False) if is_output_folder(candidate) else load_model(candidate, pretrained=pretrained)
    return ref, cand


def run(args: argparse.Namespace, console: Console) -> int:
    from convopt.data import load_data
    from convopt.loading import parse_input_shape
    from convopt.report.verify_html import write_verify_html
    from convopt.report.verify_terminal import print_verify_report
    from convopt.verify import VerifyConfig, verify_models

    attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip()) if args.attacks else ()
    config = VerifyConfig(
        max_samples=args.max_samples, batch_size=args.batch_size, min_sqnr_db=args.min_sqnr, attacks=attacks,
        eps=tuple(args.eps), norm=args.norm, pgd_steps=args.pgd_steps, pgd_step_size=args.pgd_step_size,
        restarts=args.restarts, surrogate=args.surrogate, attack_samples=args.attack_samples,
        smoothing_sigma=args.smoothing, smoothing_n0=args.smoothing_n0, smoothing_n=args.smoothing_n,
        smoothing_alpha=args.smoothing_alpha, smoothing_samples=args.smoothing_samples, ibp_eps=args.ibp,
        ibp_samples=args.ibp_samples, profile=args.profile or args.trace is not None,
        profile_repeats=args.profile_repeats, trace_path=args.trace, valid_range=args.valid_range, seed=args.seed,
    )  # fmt: skip
    reference, candidate = load_models(args.reference, args.candidate, pretrained=args.pretrained,
                                       trust_code=args.trust_code)  # fmt: skip
    shape = parse_input_shape(args.input_shape) if args.input_shape else reference.input_shape
    data = load_data(args.data, input_shape=shape, limit=args.max_samples)
    with console.status("verifying") as status:
        report = verify_models(reference.model, candidate.model, data, config, reference_name=reference.name,
                               candidate_name=candidate.name, data_name=args.data,
                               progress=lambda stage: status.update(f"verifying: {stage}"))  # fmt: skip
    if args.json != "-":
        print_verify_report(report, console)
    if args.json:
        text = json.dumps(report.to_dict(), indent=2, allow_nan=False)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            from convopt.io import atomic_write_text

            console.print(f"wrote {atomic_write_text(args.json, text)}", highlight=False)
    if args.html:
        console.print(f"wrote {write_verify_html(report, args.html)}", highlight=False)
    return 1 if args.strict and not report.passed else 0


__all__ = ["add_parser", "load_models", "run"]
