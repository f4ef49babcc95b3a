"""Which PyTorch module each ONNX node came from, read from the dynamo exporter's node metadata.

`torch.onnx.export(..., dynamo=True)` records on every node the module scopes it was traced in
(`pkg.torch.onnx.name_scopes`, e.g. "['', 'layer1', 'layer1.conv1', 'conv2d_1']": the model, its
submodules by qualified name, then the op). The innermost module scope is the module that ran the op,
so excluding module "layer1.conv1" from quantization means excluding the nodes it produced. ONNX
Runtime's pre-processing and quantizer keep node names and this metadata on the nodes they keep.
"""

from __future__ import annotations

import ast
from typing import Any, Iterable

from convopt.errors import ConfigError

NAME_SCOPES = "pkg.torch.onnx.name_scopes"


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


def _inside(module: str | None, name: str) -> bool:
    return module is not None and (name == "" or module == name or module.startswith(name + "."))


def nodes_of_modules(graph: Any, modules: Iterable[str]) -> dict[str, list[str]]:
    """{module name: names of the ONNX nodes it (or any of its submodules) produced}, for every name.

    Raises:
        ConfigError: a module name that produced no node (misspelt, or never called in forward).
    """
    found: dict[str, list[str]] = {}
    origins = [(node.name, node_module(node)) for node in graph.node]
    for name in modules:
        found[name] = [node for node, module in origins if _inside(module, name)]
        if not found[name]:
            known = sorted({m for _, m in origins if m})
            raise ConfigError(f"module {name!r} produced no node of the exported ONNX graph; modules that did: "
                              f"{', '.join(known[:40])}{' ...' if len(known) > 40 else ''}")  # fmt: skip
    return found
