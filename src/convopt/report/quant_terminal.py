"""Rich terminal table of the report's `quantization` dict (keys as in convopt.report.quant_html)."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from convopt.errors import ConfigError
from convopt.report.quant_html import breakers_of


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _range(pair: Any) -> str:
    return f"[{_num(pair[0])}, {_num(pair[1])}]" if pair else "-"


def quant_table(quant: dict[str, Any]) -> Table:
    """One row per conv/linear layer: precision, weight and output SQNR, cosine, max |err|, ranges, metric drop.

    Rows of layers that broke the budget first are red (the first one bold and marked); float layers say why.
    """
    if not isinstance(quant, dict) or not isinstance(quant.get("layers"), list):
        raise ConfigError("quant_table needs the report's quantization dict with a 'layers' list")
    excluded = dict(quant.get("excluded") or {})
    drops = {row["name"]: row.get("drop") for row in quant.get("sensitivity") or []}
    breakers = breakers_of(quant)
    title = "INT8 quantization, layer by layer"
    if quant.get("engine"):
        title += f" (engine: {quant['engine']})"
    if quant.get("max_accuracy_drop") is not None:
        title += f"; budget {_num(quant['max_accuracy_drop'])} points"
    table = Table(title=title, header_style="bold")
    columns = ("layer", "kind", "precision", "W SQNR dB", "out SQNR dB", "cosine", "max |err|", "weight range",
               "input range", "drop")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("layer", "kind", "precision") else "right")
    for layer in quant["layers"]:
        name = layer["name"]
        precision = f"float ({excluded[name]})" if name in excluded else layer.get("precision", "int8")
        rank = breakers.index(name) if name in breakers else None
        label = name + ("  <- broke the budget first" if rank == 0 else f"  <- #{rank + 1}" if rank else "")
        style = "bold red" if rank == 0 else ("red" if rank is not None else None)
        table.add_row(label, str(layer.get("kind", "-")), precision, _num(layer.get("weight_sqnr_db")),
                      _num(layer.get("output_sqnr_db")), _num(layer.get("cosine"), 6), _num(layer.get("max_abs_error")),
                      _range(layer.get("weight_range")), _range(layer.get("act_range")), _num(drops.get(name)),
                      style=style)  # fmt: skip
    listed = {layer["name"] for layer in quant["layers"]}
    for name, why in excluded.items():  # left in float without a simulated row (e.g. an op the engine lacks)
        if name not in listed:
            table.add_row(name, "-", f"float ({why})", *["-"] * (len(columns) - 3))
    return table


__all__ = ["quant_table"]
