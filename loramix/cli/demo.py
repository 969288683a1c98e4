"""`loramix demo`: the whole pipeline on the bundled tiny model and the built-in skills."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def demo(
    out: Path = typer.Option(Path("loramix-demo"), "--out", "-o", help="Folder for everything the demo writes."),
    quick: bool = typer.Option(False, "--quick", help="Smaller budgets (about a minute), same table."),
    seed: int = typer.Option(0, "--seed", help="Seed for every step."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch [default: one per core]."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace --out if an earlier demo made it."),
    json_out: bool = typer.Option(False, "--json", help="Print demo.json instead of the tables."),
) -> None:
    """Compose two skills on loramix-tiny, LoRA Soups' experiment in a few minutes on a CPU.

    Trains a math and a code LoRA and a data-mix LoRA, fits CAT (α per layer) on 5% of each
    skill's data, merges with linear, cat 0.5/0.5 and 1/1, ties and dare_ties, and scores every
    model on the held-out composite task (word problem to program, run in a sandbox) and on each
    skill's own eval split. Prints the table, CAT's gain against the single skills', the α heatmap
    and the same pipeline as shell commands; everything it made stays in --out.

    Example: loramix demo --quick -o /tmp/demo
    """
    from loramix.cli import render
    from loramix.demo.plan import DemoConfig
    from loramix.demo.run import run_demo

    config = DemoConfig(out=out, quick=quick, seed=seed, threads=threads, force=force)

    def say(text: str) -> None:
        render.stderr().print(text, highlight=False, markup=False)

    doc = run_demo(config, render.training_progress, render.progress_items, say)
    if json_out:
        render.print_json(doc)
        return
    for part in render.demo_view(doc, out, render.color_enabled(render.stdout())):
        render.stdout().print(part, soft_wrap=True, highlight=False)  # commands stay whole, to copy
