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
        draw = render.adapter_view
    else:
        check_compatible(adapters)
        a, b = adapters
        shared = len(set(a.modules) & set(b.modules))
        with render.progress("comparing", shared) as step:
            report = compare_report(a, b, density, on_module=step)
        draw = render.compare_view
    if svg is not None:
        render.save_svg(svg, draw(report, color=True), title=f"loramix inspect {' '.join(map(str, paths))}")
    if json_out:
        render.print_json(report)
        return
    for part in draw(report, color=render.color_enabled()):
        render.stdout().print(part)
