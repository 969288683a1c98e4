"""Per-module values laid out as a grid for heatmaps: layers down, module kinds across.

Layer and kind come from loramix.core.modules; a kind that is ambiguous within a layer (experts,
sub-layers) is labelled by its whole path inside the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from loramix.core.modules import parse

Values = list[list[float | None]]

# conventional order of projection names across columns; others follow alphabetically
_COLUMN_ORDER = [
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "gate_up_proj",
    "down_proj",
    "query",
    "key",
    "value",
    "c_attn",
    "c_proj",
    "c_fc",
    "dense",
    "fc1",
    "fc2",
    "w1",
    "w2",
    "w3",
]


@dataclass(frozen=True)
class Grid:
    rows: list[str]  # layer indices as text, "-" for modules outside numbered layers
    cols: list[str]
    values: Values  # (rows, cols), None where there is no module

    def to_json(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, "values": self.values}


def _column_keys(names: list[str]) -> dict[str, str]:
    """Module name -> column label: the last path component, or the full in-layer path if ambiguous."""
    rests = {n: parse(n).within for n in names}
    by_short: dict[str, set[str]] = {}
    for rest in rests.values():
        by_short.setdefault(rest.rsplit(".", 1)[-1], set()).add(rest)
    return {n: (r.rsplit(".", 1)[-1] if len(by_short[r.rsplit(".", 1)[-1]]) == 1 else r) for n, r in rests.items()}


def _col_rank(label: str) -> tuple[int, str]:
    short = label.rsplit(".", 1)[-1]
    return (_COLUMN_ORDER.index(short) if short in _COLUMN_ORDER else len(_COLUMN_ORDER), label)


def grid(values: dict[str, float | None]) -> Grid:
    """Arrange per-module values as layers (rows) × module kinds (columns); None where absent."""
    cols_of = _column_keys(list(values))
    layers = {n: parse(n).layer for n in values}
    cols = sorted(set(cols_of.values()), key=_col_rank)
    numbered = sorted({layer for layer in layers.values() if layer is not None})
    rows = [str(layer) for layer in numbered] + (["-"] if None in layers.values() else [])
    table: Values = [[None] * len(cols) for _ in rows]
    for name, v in values.items():
        layer = layers[name]
        r = rows.index("-" if layer is None else str(layer))
        table[r][cols.index(cols_of[name])] = v
    return Grid(rows, cols, table)
