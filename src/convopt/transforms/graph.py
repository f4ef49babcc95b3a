"""torch.fx tracing for graph passes, with an error that names the module that could not be traced."""

from __future__ import annotations

import torch.fx
from torch import nn

from convopt.errors import UntraceableModelError


class _NamingTracer(torch.fx.Tracer):
    """A Tracer that remembers which module it was inside when tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_in: str | None = None  # the innermost module whose forward raised

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # convopt's own layers (AlgoConv2d, FusedConv, ...) are single calls, like torch.nn's.
        return type(m).__module__.startswith("convopt.nn") or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:  # noted, then re-raised unchanged
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m)
            raise


def trace_graph(model: nn.Module) -> torch.fx.Graph:
    """The model's fx graph; UntraceableModelError names the module where tracing broke and what to do."""
    tracer = _NamingTracer()
    try:
        return tracer.trace(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...): all mean "not traceable"
        where = f"module '{tracer.failed_in}'" if tracer.failed_in else "the model's own forward"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UntraceableModelError(
            f"torch.fx cannot trace {where} ({type(exc).__name__}: {reason}); graph passes need a traceable "
            "model: skip them (select other modules) or make that forward free of data-dependent control flow"
        ) from exc


def module_call_counts(graph: torch.fx.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts
