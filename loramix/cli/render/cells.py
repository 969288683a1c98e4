"""Cells and small tables: number formats, key-value tables and heatmaps.

Without colour a heatmap cell is drawn with shade characters, so the picture survives a pipe or a
log file.
"""

from __future__ import annotations

from typing import Sequence

from rich.table import Table
from rich.text import Text

# dark to bright (viridis-like); text switches to black on the bright half
PALETTE = ["#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725"]
SHADES = " ░▒▓█"


def fmt_seconds(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def key_value_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    return table


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def compact(x: float) -> str:
    """At most six characters: 4.47, 0.0123, -0.05, 1.2e-05 -> '1e-05'."""
    for text in (f"{x:.3g}", f"{x:.2g}", f"{x:.1g}", f"{x:.0e}"):
        if len(text) <= 6:
            return text
    return f"{x:.0e}"


def heatmap(
    title: str,
    rows: Sequence[str],
    cols: Sequence[str],
    values: Sequence[Sequence[float | None]],
    *,
    color: bool,
    lo: float | None = None,
    hi: float | None = None,
) -> Table:
    """A rows × cols table of values; cells shaded by value between lo and hi (default min, max)."""
    seen = [v for row in values for v in row if v is not None]
    lo = min(seen, default=0.0) if lo is None else lo
    hi = max(seen, default=1.0) if hi is None else hi
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("", style="bold", no_wrap=True)
    for c in cols:
        table.add_column(c, justify="right", no_wrap=True, overflow="ellipsis", max_width=10)
    for label, row in zip(rows, values):
        table.add_row(label, *(_cell(v, lo, hi, color) for v in row))
    legend = f"scale {fmt_num(lo)} … {fmt_num(hi)}" + ("" if color else f"   shades '{SHADES[1:]}' low → high")
    table.caption = Text(legend, no_wrap=True, overflow="ignore")  # as wide as it needs, even past the table
    return table


def _level(v: float, lo: float, hi: float, n: int) -> int:
    t = 0.0 if hi <= lo else (v - lo) / (hi - lo)
    return min(n - 1, max(0, int(t * n)))


def _cell(v: float | None, lo: float, hi: float, color: bool) -> Text:
    if v is None:
        return Text("·")
    label = compact(v)
    if color:
        i = _level(v, lo, hi, len(PALETTE))
        fg = "black" if i >= len(PALETTE) // 2 else "white"
        return Text(f" {label} ", style=f"{fg} on {PALETTE[i]}")
    shade = SHADES[1 + _level(v, lo, hi, len(SHADES) - 1)]
    return Text(f"{shade} {label}")


def fmt_span(span: dict, fmt=str) -> str:
    """{'min': 4, 'max': 8} -> '4–8'; equal ends -> '4'; no values -> '-'."""
    if span["min"] is None:
        return "-"
    return fmt(span["min"]) if span["min"] == span["max"] else f"{fmt(span['min'])}–{fmt(span['max'])}"


def short(cols: list[str]) -> list[str]:
    return [c.removesuffix("_proj") for c in cols]
