"""`loramix demo`: the whole pipeline on the bundled tiny model and the built-in skills."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loramix.cli import options


def demo(
    out: Path = typer.Option(Path("loramix-demo"), "--out", "-o", help="Folder for everything the demo writes."),
    quick: bool = typer.Option(False, "--quick", help="Smaller budgets (about a minute), same table."),
    seed: int = options.seed("every step"),
    threads: Optional[int] = options.threads(),
    force: bool = typer.Option(False, "--force", "-f", help="Replace --out if an earlier demo made it."),
    json_out: bool = options.json_out("the tables (demo.json)"),
) -> None:
    """Compose two skills on loramix-tiny, LoRA Soups' experiment in a few minutes on a CPU.

    Trains a math and a code LoRA and two data-mix LoRAs (all the rows; only CAT's 5% sample), fits
    CAT (α per module) and tuned-cat on 5% of each skill's data, merges with linear, cat 1/1, ties
    and dare_ties, and scores every model on the held-out composite task (word problem to program,
    run in a sandbox) and on each skill's own eval split. Prints the table, which model composes
    best against both data mixes, CAT's gain against the single skills', the α heatmap and the same
    pipeline as shell commands; everything it made stays in --out.

    Example: loramix demo --quick -o /tmp/demo
    """
    from loramix.cli.render import console, progress, views
    from loramix.demo.plan import DemoConfig
    from loramix.demo.run import run_demo

    config = DemoConfig(out=out, quick=quick, seed=seed, threads=threads, force=force)
    doc = run_demo(config, progress.training_progress, progress.progress_items)
    if json_out:
        console.print_json(doc)
        return
    for part in views.demo_view(doc, out, console.color_enabled(console.stdout())):
        console.stdout().print(part, soft_wrap=True, highlight=False)  # commands stay whole, to copy
