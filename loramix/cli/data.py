"""`loramix data`: list the built-in skills, show rows of a data set, or export them as JSONL."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def data(
    source: Optional[str] = typer.Argument(None, help="builtin:NAME[:SPLIT] or a JSONL file [default: list the built-in skills].", show_default=False),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Rows to show or export [default: 5 shown; all exported]."),
    dump: Optional[Path] = typer.Option(None, "--dump", help="Write the rows to this JSONL file instead of showing them."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace --dump if it exists."),
    json_out: bool = typer.Option(False, "--json", help="List the built-in skills as JSON."),
) -> None:
    """Show or export training and evaluation data as JSONL (one row per line).

    Built-in skills are deterministic: builtin:math is its train split, builtin:math:eval its
    eval split; the two never share a problem.

    Example: loramix data builtin:math-code:eval --limit 3
    """
    from loramix.core import data as datasets
    from loramix.cli import render

    if source is None:
        _list(json_out)
        return
    if dump is not None:
        n = datasets.dump(datasets.load(source, limit), dump, force)
        render.stderr().print(f"wrote {n} rows to {dump}", highlight=False)
        return
    for line in datasets.jsonl_lines(datasets.load(source, 5 if limit is None else limit).rows):
        typer.echo(line)


def _list(json_out: bool) -> None:
    from loramix.cli import render
    from loramix.zoo.skills import SKILLS

    rows = [{"name": f"builtin:{s.name}", "summary": s.summary, "held_out": s.composite,
             "train_rows": s.default_rows("train"), "eval_rows": s.default_rows("eval")} for s in SKILLS.values()]
    if json_out:
        render.print_json({"skills": rows})
    else:
        render.stdout().print(render.skills_table(rows))
