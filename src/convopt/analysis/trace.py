"""Run one forward pass and record every aten op it executes, with the module that executed it.

The recording happens at the dispatcher (a TorchDispatchMode), so functional calls (`F.conv2d` inside a
forward, `x @ w`, einsum) are seen exactly like module calls, with the shapes actually used. Module
attribution comes from global forward hooks: the innermost module whose forward is running owns the op.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from convopt.analysis.op_costs import MAC_FORMULAS, OTHER_FORMULAS, conv_spec_from_call, pointwise_ops
from convopt.errors import InputShapeError


@dataclass
class ModuleCall:
    """One call of one module's forward."""

    module: nn.Module
    name: str
    index: int  # 1 for the first call of this module, 2 for the second, ...
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    kind: str | None = None  # the original class name when `module` is a stand-in (exported programs)


@dataclass
class OpRecord:
    """One executed aten op with its exact cost."""

    op: str  # aten packet name, e.g. "convolution"
    call: ModuleCall | None
    macs: int
    other_ops: int
    bytes_read: int
    bytes_written: int
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    dtype: str
    param_numel: int
    conv_spec: Any = None
    seconds: float | None = None


@dataclass
class Trace:
    records: list[OpRecord] = field(default_factory=list)
    calls: list[ModuleCall] = field(default_factory=list)


def _is_view(func: Any) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _tensors(tree: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _first_shape(tree: Any) -> tuple[int, ...] | None:
    tensors = _tensors(tree)
    return tuple(tensors[0].shape) if tensors else None


class _RecordingMode(TorchDispatchMode):
    def __init__(self, trace: Trace, stack: list[ModuleCall], param_ids: set[int], timed: bool):
        super().__init__()
        self.trace, self.stack, self.param_ids, self.timed = trace, stack, param_ids, timed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_view(func):
            return func(*args, **kwargs)
        start = time.perf_counter() if self.timed else 0.0
        out = func(*args, **kwargs)
        seconds = time.perf_counter() - start if self.timed else None
        packet = func.overloadpacket
        inputs, outputs = _tensors((args, kwargs)), _tensors(out)
        macs = MAC_FORMULAS[packet](args, kwargs, out) if packet in MAC_FORMULAS else 0
        if packet in OTHER_FORMULAS:
            other = OTHER_FORMULAS[packet](args, kwargs, out)
        elif torch.Tag.pointwise in func.tags:
            other = pointwise_ops(args, kwargs, out)
        else:
            other = 0
        spec = conv_spec_from_call(args) if packet.__name__ in ("convolution", "_convolution") else None
        bytes_read = sum(t.numel() * t.element_size() for t in inputs)
        bytes_written = sum(t.numel() * t.element_size() for t in outputs)
        if not (macs or other or bytes_read or bytes_written):
            return out  # allocations of empty tensors: nothing to account for
        floats = [t for t in inputs + outputs if t.is_floating_point()]
        dtype = (floats or inputs or outputs)[0].dtype if (floats or inputs or outputs) else torch.float32
        self.trace.records.append(
            OpRecord(
                op=packet.__name__,
                call=self.stack[-1] if self.stack else None,
                macs=int(macs),
                other_ops=int(other),
                bytes_read=bytes_read,
                bytes_written=bytes_written,
                input_shape=tuple(inputs[0].shape) if inputs else None,
                output_shape=tuple(outputs[0].shape) if outputs else None,
                dtype=str(dtype).replace("torch.", ""),
                param_numel=sum(t.numel() for t in inputs if id(t) in self.param_ids),
                conv_spec=spec,
                seconds=seconds,
            )
        )
        return out


class _ScopedInterpreter(torch.fx.Interpreter):
    """Runs an exported program node by node, attributing each op to the module it came from.

    torch.export keeps the source module of every node in `nn_module_stack`; the flat graph has no
    module calls for hooks to see, so the interpreter opens a stand-in call whenever the scope changes.
    """

    def __init__(self, module: torch.fx.GraphModule, stack: list[ModuleCall], trace: Trace):
        super().__init__(module)
        self.stack, self.trace, self.counts = stack, trace, {}
        self.base = len(stack)

    def run_node(self, node: torch.fx.Node) -> Any:
        if node.op == "call_function":
            scope = node.meta.get("nn_module_stack")
            path, cls = list(scope.values())[-1] if scope else ("", "")
            current = self.stack[-1].name if len(self.stack) > self.base else None
            if path != current:
                del self.stack[self.base :]
                if path:
                    try:
                        module = self.module.get_submodule(path)
                    except AttributeError:  # no parameters there: a parameter-free stand-in will do
                        module = nn.Module()
                    self.counts[path] = self.counts.get(path, 0) + 1
                    call = ModuleCall(module, path, self.counts[path], kind=cls.rsplit(".", 1)[-1])
                    self.trace.calls.append(call)
                    self.stack.append(call)
        return super().run_node(node)


def _has_module_scopes(model: nn.Module) -> bool:
    return isinstance(model, torch.fx.GraphModule) and any(
        "nn_module_stack" in node.meta for node in model.graph.nodes
    )


def trace_forward(model: nn.Module, inputs: tuple[Any, ...], *, timed: bool = False) -> tuple[Trace, Any]:
    """Run `model(*inputs)` under no_grad, recording every non-view aten op.

    Raises:
        InputShapeError: the model rejected the inputs; the message names the innermost module that failed.
    """
    names: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), name)
    param_ids = {id(p) for p in model.parameters()}
    trace, stack, counts = Trace(), [], {}

    def pre_hook(module: nn.Module, args: Any) -> None:
        name = names.get(id(module), type(module).__name__)
        counts[id(module)] = counts.get(id(module), 0) + 1
        call = ModuleCall(module, name, counts[id(module)], input_shape=_first_shape(args))
        trace.calls.append(call)
        stack.append(call)

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        if stack and stack[-1].module is module:
            stack.pop().output_shape = _first_shape(output)

    handles = [
        nn.modules.module.register_module_forward_pre_hook(pre_hook),
        nn.modules.module.register_module_forward_hook(post_hook),
    ]
    try:
        with torch.no_grad(), _RecordingMode(trace, stack, param_ids, timed):
            if _has_module_scopes(model):
                pre_hook(model, inputs)
                output = _ScopedInterpreter(model, stack, trace).run(*inputs)
                del stack[1:]
                post_hook(model, inputs, output)
            else:
                output = model(*inputs)
    except Exception as exc:  # the model's own error, re-raised typed with the failing layer named
        shapes = [tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)]
        where = f"layer '{stack[-1].name or '<root>'}' ({type(stack[-1].module).__name__})" if stack else "the model"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputShapeError(f"input shape {shapes} rejected by {where}: {reason}") from exc
    finally:
        for handle in handles:
            handle.remove()
    return trace, output
