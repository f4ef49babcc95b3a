"""`convopt optimize --quantize int8`: the INT8 flow (quantize_flow.py) timed side by side with eager fp32.

The speed table holds eager fp32, the INT8 model on each engine (OpenVINO, ONNX Runtime) and, unless
disabled, the fp32 whole-graph backends (torch.compile, ONNX Runtime). The saved model runs the INT8
engine measured fastest at the user's batch size; if that is still slower than eager fp32, or an fp32
backend beats it, the report says so.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Callable

import torch
from torch import nn

from convopt.analysis.trace import trace_forward
from convopt.optimize import OptimizeReport, OptimizeResult, state_bytes
from convopt.quantize_flow import quantize_model
from convopt.search.backends import comparison_backends
from convopt.timing import fixed_threads, interleaved_times
from convopt.transforms.config import Compose, StepRecord, relative_error
from convopt.transforms.int8_engine import ENGINES, Int8Module
from convopt.transforms.pipeline import as_inputs, first_tensor
from convopt.transforms.quantize import Int8Config


def engine_key(engine: str) -> str:
    return f"int8 ({engine})"


def _within_budget(quant: dict[str, Any], engine: str) -> bool:
    """Whether `engine` met the accuracy budget on the held-out data (True when accuracy was not measured)."""
    fp32, measured = quant["accuracy"]["fp32"], quant["engine_accuracy"].get(engine)
    return fp32 is None or measured is None or fp32 - measured <= quant["max_accuracy_drop"]


def optimize_int8(model: nn.Module, example_inputs: Any, *, name: str = "model", data: Any = None,
                  threads: int | None = None, repeats: int = 7, compare_backends: bool = True,
                  progress: Callable[[str], None] | None = None, **quantize: Any) -> OptimizeResult:  # fmt: skip
    """Quantize `model` (keyword arguments of convopt.quantize_flow.quantize_model: calibration=...,
    max_accuracy_drop=..., qat_epochs=..., ...), then time and compare it; `data` is the held-out set."""
    start = time.perf_counter()
    inputs = as_inputs(example_inputs)
    say = progress or (lambda message: None)
    notes: list[str] = []
    with fixed_threads(threads):
        threads = torch.get_num_threads()
        model = model.eval()
        trace_forward(model, inputs)  # a model that rejects the inputs fails here, naming the layer
        result = quantize_model(model, data_eval=data, example_inputs=inputs, progress=say, **quantize)
        quant, build = result.report, result.build
        engines = {engine_key(e): Int8Module(result.model.float_model, build.onnx_bytes, e).eval()
                   for e in ENGINES if e not in build.unavailable}  # fmt: skip
        backends = comparison_backends(model, inputs, say, "fp32") if compare_backends else []
        runs: dict[str, Callable[[], Any]] = {"eager": lambda: model(*inputs)}
        runs.update({key: (lambda m=m: m(*inputs)) for key, m in engines.items()})
        runs.update({b.name: b.run for b in backends if b.run is not None})
        say("timing eager fp32, the INT8 engines and the other backends side by side")
        times = {k: v.median_s * 1e3 for k, v in interleaved_times(runs, repeats=repeats).items()}
        budget_ok = {key: _within_budget(quant, key[len("int8 (") : -1]) for key in engines}
        chosen = min((k for k in engines if budget_ok[k]), key=times.get, default=engine_key(build.engine))
        module, engine = engines[chosen], chosen[len("int8 (") : -1]
        after = quant["accuracy"]["int8"]
        if engine != build.engine:
            notes.append(f"at batch {inputs[0].shape[0]}, {engine} measured faster than {build.engine} (chosen on the "
                         f"calibration batch) and meets the budget too: the saved model runs {engine}")  # fmt: skip
            quant["engine"] = engine
            after = quant["engine_accuracy"][engine]
            quant["accuracy"]["int8"] = after
            if after is not None and quant["accuracy"]["fp32"] is not None:
                quant["accuracy"]["drop"] = quant["accuracy"]["fp32"] - after
        for key in engines:
            if not budget_ok[key] and times[key] < times[chosen]:
                notes.append(f"{key} was faster ({times[key]:.2f} ms) but its accuracy misses the budget: not used")
        with torch.no_grad():
            check = data[0][: max(len(inputs[0]), 64)] if data is not None else inputs[0]
            reference = first_tensor(model(check))
            error = relative_error(reference, first_tensor(module(check)))
            eager_out = first_tensor(model(*inputs))
    table: dict[str, dict[str, Any]] = {
        key: {"ms": times.get(key), "speedup_vs_eager": times["eager"] / times[key] if key in times else None}
        for key in runs
    }
    for key, m in engines.items():
        table[key]["max_rel_error"] = relative_error(reference, first_tensor(m(check)))
    for backend in backends:
        entry = table.setdefault(backend.name, {"ms": None, "speedup_vs_eager": None})
        entry.update(build_seconds=backend.build_seconds, unavailable=backend.unavailable)
        if backend.run is not None:
            entry["max_rel_error"] = relative_error(eager_out, first_tensor(backend.run()))
    for engine_name, reason in build.unavailable.items():
        table[engine_key(engine_name)] = {"ms": None, "speedup_vs_eager": None, "unavailable": reason}
    fastest = min(times, key=times.get)
    if times[chosen] > times["eager"]:
        notes.append(f"the INT8 engine is slower than eager fp32 on this model and batch ({times[chosen]:.2f} ms vs "
                     f"{times['eager']:.2f} ms): the saved model is INT8 as asked, but not faster")  # fmt: skip
    if fastest not in engines and fastest != "eager":
        notes.append(f"{fastest} (fp32) measured faster than the INT8 engine ({times[fastest]:.2f} ms vs "
                     f"{times[chosen]:.2f} ms)")  # fmt: skip
    notes.append(f"INT8 engine: {engine} ({', '.join(f'{k} {times[k]:.2f} ms' for k in engines)}); quantized "
                 f"ONNX (QDQ) from ONNX Runtime's quantizer with convopt's calibration")  # fmt: skip
    recipe = Compose([*result.recipe.steps[:-1], Int8Config(engine=engine, observer=quant["observer"],
                                                            exclude=result.recipe.steps[-1].exclude)])  # fmt: skip
    step = StepRecord(recipe.steps[-1].to_dict(), {"*": f"INT8 engine {engine}"}, dict(build.excluded),
                      list(quant["notes"]), error, quant["seconds"])  # fmt: skip
    report = OptimizeReport(
        model=name,
        input_shape=list(inputs[0].shape),
        threads=threads,
        accuracy={"before": quant["accuracy"]["fp32"], "after": after},
        latency_ms={"batch": int(inputs[0].shape[0]), "before": times["eager"], "after": times[chosen]},
        max_rel_error=error,
        size_bytes={"before": state_bytes(model), "after": len(build.onnx_bytes)},
        layers=[],
        passes=[asdict(step)],
        backends=table,
        fastest=fastest,
        chosen_backend=chosen,
        tuning={},
        notes=notes + quant["notes"],
        seconds=time.perf_counter() - start,
        quantization=quant,
    )
    return OptimizeResult(module, recipe, report, None)


__all__ = ["engine_key", "optimize_int8"]
