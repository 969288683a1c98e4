"""`loramix inspect`: an adapter's summary and ‖ΔW‖ heatmap, or two adapters compared."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from loramix.errors import InputError


def inspect(
    paths: List[Path] = typer.Argument(..., help="One adapter folder, or two to compare.", show_default=False),
    density: float = typer.Option(0.2, "--density", help="Comparing: TIES trim before counting sign conflicts (1 = every entry)."),
    svg: Optional[Path] = typer.Option(None, "--svg", help="Also save the picture as an SVG file."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
) -> None:
    """Show an adapter (base, ranks, alpha, targets, parameters, and a layers × modules heatmap of
    ‖ΔW‖_F), or compare two adapters per layer (cosine similarity of the deltas, TIES sign-conflict
    rate).

    Example: loramix inspect math/ code/ --svg compare.svg
    """
    from loramix import render
    from loramix.adapters import check_compatible, read_adapter
    from loramix.inspection import adapter_report, compare_report

    if len(paths) > 2:
        raise InputError(f"inspect takes one or two paths, got {len(paths)}")
    if not 0.0 < density <= 1.0:
        raise InputError(f"--density must be in (0, 1], got {density}")
    adapters = [read_adapter(p) for p in paths]
    if len(adapters) == 1:
        report = adapter_report(adapters[0])
        draw = _adapter_view
    else:
        check_compatible(adapters)
        a, b = adapters
        shared = len(set(a.modules) & set(b.modules))
        with render.progress("comparing", shared) as step:
            report = compare_report(a, b, density, on_module=step)
        draw = _compare_view
    if svg is not None:
        render.save_svg(svg, draw(report, color=True), title=f"loramix inspect {' '.join(map(str, paths))}")
    if json_out:
        render.print_json(report)
        return
    for part in draw(report, color=render.color_enabled()):
        render.stdout().print(part)


def _span(s: dict, fmt=str) -> str:
    return fmt(s["min"]) if s["min"] == s["max"] else f"{fmt(s['min'])}–{fmt(s['max'])}"


def _adapter_view(r: dict, color: bool) -> list:
    from loramix.render import fmt_num, heatmap, key_value_table

    size = f"{r['size_bytes'] / 1e6:.2f} MB" if r["size_bytes"] is not None else "-"
    summary = key_value_table(
        r["path"],
        [
            ("base", r["base"]),
            ("rank", _span(r["rank"])),
            ("alpha", str(r["lora_alpha"]) + (" (rsLoRA)" if r["use_rslora"] else "")),
            ("scale", _span(r["scale"], fmt_num)),
            ("targets", ", ".join(r["targets"])),
            ("modules", f"{r['modules']} in {r['layers']} layers"),
            ("parameters", f"{r['parameters']:,}"),
            ("dtype", f"{r['dtype']} ({size})"),
        ],
    )
    g = r["delta_norm"]
    return [summary, "", heatmap("‖ΔW‖_F per layer and module", g["rows"], _short(g["cols"]), g["values"], color=color)]


def _compare_view(r: dict, color: bool) -> list:
    from rich.table import Table

    from loramix.render import fmt_num, heatmap

    table = Table(title=f"{r['a']}  vs  {r['b']}", title_justify="left", box=None)
    for col in ("layer", "cosine", f"sign conflicts (density {fmt_num(r['density'])})", "‖ΔW‖ a", "‖ΔW‖ b"):
        table.add_column(col, justify="right")
    for row in r["layers"] + [r["overall"]]:
        rate = row["conflict_rate"]
        table.add_row(
            row["layer"], fmt_num(row["cosine"]), "-" if rate is None else f"{100 * rate:.1f}%",
            fmt_num(row["norm_a"]), fmt_num(row["norm_b"]),
        )
    parts = [table]
    for side in ("a", "b"):
        if r[f"only_in_{side}"]:
            parts.append(f"{len(r[f'only_in_{side}'])} modules only in {r[side]}")
    g = r["cosine"]
    parts += ["", heatmap("cosine similarity of the deltas", g["rows"], _short(g["cols"]), g["values"], color=color, lo=-1.0, hi=1.0)]
    return parts


def _short(cols: list[str]) -> list[str]:
    return [c.removesuffix("_proj") for c in cols]
