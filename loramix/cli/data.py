"""`loramix data`: list the built-in skills, show rows of a data set, or export them as JSONL."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loramix.cli import options


def data(
    source: Optional[str] = typer.Argument(
        None, help="builtin:NAME[:SPLIT] or a JSONL file [default: list the built-in skills].", show_default=False
    ),
    limit: Optional[int] = typer.Option(
        None, "--limit", "-n", help="Rows to show or export [default: 5 shown; all exported]."
    ),
    dump: Optional[Path] = typer.Option(
        None, "--dump", help="Write the rows to this JSONL file instead of showing them."
    ),
    force: bool = options.force("--dump"),
    json_out: bool = options.json_out("a table or JSONL lines"),
) -> None:
    """Show or export training and evaluation data as JSONL (one row per line).

    Built-in skills are deterministic: builtin:math is its train split, builtin:math:eval its
    eval split; the two never share a problem.

    Example: loramix data builtin:math-code:eval --limit 3
    """
    from loramix.cli.render import console
    from loramix.core import data as datasets

    if source is None:
        _list(json_out)
        return
    if dump is not None:
        n = datasets.dump(datasets.load(source, limit), dump, force)
        console.stderr().print(f"wrote {n} rows to {dump}", highlight=False)
        return
    dataset = datasets.load(source, 5 if limit is None else limit)
    if json_out:
        console.print_json({"data": dataset.source, "sha256": dataset.digest, "rows": dataset.rows})
        return
    for line in datasets.jsonl_lines(dataset.rows):
        typer.echo(line)


def _list(json_out: bool) -> None:
    from loramix.cli.render import console, views
    from loramix.zoo.skills import SKILLS

    rows = [
        {
            "name": f"builtin:{s.name}",
            "summary": s.summary,
            "held_out": s.composite,
            "train_rows": s.default_rows("train"),
            "eval_rows": s.default_rows("eval"),
        }
        for s in SKILLS.values()
    ]
    if json_out:
        console.print_json({"skills": rows})
    else:
        console.stdout().print(views.skills_table(rows))
