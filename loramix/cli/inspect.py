"""`loramix inspect`: an adapter's summary and ‖ΔW‖ heatmap, or two adapters compared."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from loramix.cli import options
from loramix.core.errors import InputError


def inspect(
    paths: List[Path] = typer.Argument(
        ..., help="One adapter folder or fit-cat result, or two adapters to compare.", show_default=False
    ),
    density: float = typer.Option(
        0.2, "--density", help="Comparing: TIES trim before counting sign conflicts (1 = every entry)."
    ),
    svg: Optional[Path] = typer.Option(None, "--svg", help="Also save the picture as an SVG file."),
    json_out: bool = options.json_out(),
) -> None:
    """Show an adapter (base, ranks, alpha, targets, parameters, and a layers × modules heatmap of
    ‖ΔW‖_F), or compare two adapters per layer (cosine similarity of the deltas, TIES sign-conflict
    rate). On a fit-cat result (or its cat_weights.json), show the fit and the α heatmap: layers
    down, adapters across (adapter × module for --granularity module); on a routed mixture
    (fit-cat -m moe or arrow), the fit and each expert's mean routing share per layer.

    Example: loramix inspect math/ code/ --svg compare.svg
    """
    from loramix.cli.render import progress, views
    from loramix.core.adapters import read_adapter
    from loramix.core.compat import check_compatible
    from loramix.inspect.report import adapter_report, compare_report

    if len(paths) > 2:
        raise InputError(f"inspect takes one or two paths, got {len(paths)}")
    if not 0.0 < density <= 1.0:
        raise InputError(f"--density must be in (0, 1], got {density}")
    if len(paths) == 1 and (_is_cat_result(paths[0]) or _is_routed(paths[0])):
        _show(_cat_view(paths[0]), views.inspect_cat_view, paths, svg, json_out)
        return
    adapters = [read_adapter(p, strict=False) for p in paths]  # looking is allowed where merging is not
    if len(adapters) == 1:
        _show(adapter_report(adapters[0]), views.adapter_view, paths, svg, json_out)
        return
    check_compatible(adapters)
    a, b = adapters
    shared = len(set(a.modules) & set(b.modules))
    with progress.progress("comparing", shared) as step:
        report = compare_report(a, b, density, on_module=step)
    _show(report, views.compare_view, paths, svg, json_out)


def _is_cat_result(path: Path) -> bool:
    from loramix.soup.table import TABLE_NAME

    return (path / TABLE_NAME).is_file() if path.is_dir() else path.name.endswith(".json")


def _is_routed(path: Path) -> bool:
    from loramix.core import routing

    return routing.is_routed(path)


def _cat_view(path: Path):
    """The fit behind a fit-cat result: its α table, or a routed mixture's routing shares."""
    from loramix.core import routing
    from loramix.inspect.report import cat_view
    from loramix.soup import table

    if routing.is_routed(path):
        fitted = routing.read_fit(path)
        return cat_view(str(path), fitted)
    return cat_view(str(table.table_path(path).parent), table.read(path))


def _show(report, draw, paths: List[Path], svg: Optional[Path], json_out: bool) -> None:
    """Print `report` as JSON or as `draw(report, color)` draws it; --svg saves the drawing too."""
    from loramix.cli.render import console

    if svg is not None:
        console.save_svg(svg, draw(report, color=True), title=f"loramix inspect {' '.join(map(str, paths))}")
    if json_out:
        console.print_json(report.to_json())
        return
    for part in draw(report, color=console.color_enabled()):
        console.stdout().print(part)
