"""Which PyTorch module each ONNX node came from, read from the dynamo exporter's node metadata.

`torch.onnx.export(..., dynamo=True)` records on every node the module scopes it was traced in
(`pkg.torch.onnx.name_scopes`, e.g. "['', 'layer1', 'layer1.conv1', 'conv2d_1']": the model, its
submodules by qualified name, then the op). The innermost module scope is the module that ran the op,
so excluding module "layer1.conv1" from quantization means excluding the nodes it produced. ONNX
Runtime's pre-processing and quantizer keep node names and this metadata on the nodes they keep.

Ops that a module's forward runs itself rather than through a submodule (the residual add of a block,
`x + self.conv(x)`) are named "MODULE:OpType", e.g. "features.3:Add" ("" is the model itself: ":Add"):
the nodes of that type whose innermost module is exactly MODULE. Mixed precision uses such names to keep
one block's add in float without its convs.
"""

from __future__ import annotations

import ast
from typing import Any, Iterable

from convopt.errors import ConfigError

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
OP_SEPARATOR = ":"


def node_module(node: Any) -> str | None:
    """Qualified name of the innermost module that produced `node` (an onnx.NodeProto); None if unknown."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            # [model "", submodules..., op name]: the op name is last, the innermost module before it
            return scopes[-2] if len(scopes) >= 2 else None
    return None


def op_point(node: Any) -> str | None:
    """"MODULE:OpType" for `node` (see the module docstring); None when its module is unknown."""
    module = node_module(node)
    return None if module is None else f"{module}{OP_SEPARATOR}{node.op_type}"


def split_op_point(name: str) -> tuple[str, str] | None:
    """("MODULE", "OpType") for an op-point name, None for a plain module name."""
    module, separator, op_type = name.rpartition(OP_SEPARATOR)
    return (module, op_type) if separator and op_type else None


def _inside(module: str | None, name: str) -> bool:
    return module is not None and (name == "" or module == name or module.startswith(name + "."))


def _selects(node: Any, module: str | None, name: str) -> bool:
    point = split_op_point(name)
    if point is None:
        return _inside(module, name)
    return module == point[0] and node.op_type == point[1]


def nodes_of_modules(graph: Any, modules: Iterable[str]) -> dict[str, list[str]]:
    """{name: names of the ONNX nodes it selects}, for every name: a module name selects the nodes it (or any
    of its submodules) produced; "MODULE:OpType" the nodes of that type MODULE's own forward produced.

    Raises:
        ConfigError: a name that selects no node (misspelt, or never called in forward).
    """
    found: dict[str, list[str]] = {}
    origins = [(node, node_module(node)) for node in graph.node]
    for name in modules:
        found[name] = [node.name for node, module in origins if _selects(node, module, name)]
        if not found[name]:
            if split_op_point(name) is None:
                what, known = "module", sorted({m for _, m in origins if m})
            else:
                what, known = "op point", sorted({op_point(n) for n, m in origins if m is not None})
            raise ConfigError(f"{what} {name!r} produced no node of the exported ONNX graph; {what}s that did: "
                              f"{', '.join(known[:40])}{' ...' if len(known) > 40 else ''}")  # fmt: skip
    return found


__all__ = ["NAME_SCOPES", "OP_SEPARATOR", "node_module", "nodes_of_modules", "op_point", "split_op_point"]
