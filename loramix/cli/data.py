"""`loramix data`: list the built-in skills, show rows of a data set, or export them as JSONL."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from loramix.cli import options


def data(
    sources: Optional[List[str]] = typer.Argument(
        None,
        help="builtin:NAME[:SPLIT] or JSONL files, one after the other [default: list the built-in skills].",
        show_default=False,
    ),
    limit: Optional[int] = typer.Option(
        None, "--limit", "-n", help="Rows to show or export [default: 5 shown; all exported]."
    ),
    dump: Optional[Path] = typer.Option(
        None, "--dump", help="Write the rows to this JSONL file instead of showing them."
    ),
    fraction: Optional[float] = typer.Option(
        None, "--fraction", help="Keep this share of each source: the rows fit-cat --fraction --seed uses."
    ),
    balance: bool = typer.Option(
        False, "--balance", help="With --fraction: the same total split evenly across the sources (fit-cat --balance)."
    ),
    seed: int = options.seed("the --fraction sample (the same as fit-cat's)"),
    force: bool = options.force("--dump"),
    json_out: bool = options.json_out("a table or JSONL lines"),
) -> None:
    """Show or export training and evaluation data as JSONL (one row per line).

    Built-in skills are deterministic: builtin:math is its train split, builtin:math:eval its
    eval split; the two never share a problem.

    With --fraction F --seed S the rows are exactly those `fit-cat --fraction F --seed S` learns
    from (its validation rows included), so a data-mix LoRA can be trained on the same data.

    Example: loramix data builtin:math-code:eval --limit 3

    Example: loramix data builtin:math builtin:code --fraction 0.05 --dump sample.jsonl

    Example: loramix data builtin:manual builtin:instruct --fraction 0.05 --balance --dump even.jsonl
    """
    from loramix.cli.render import console
    from loramix.core import data as datasets
    from loramix.core.errors import InputError

    if not sources:
        _list(json_out)
        return
    if balance and fraction is None:
        raise InputError("--balance splits the --fraction sample; give --fraction too")
    dataset = _rows(list(sources), limit, fraction, seed, shown=5 if dump is None else None, balance=balance)
    if dump is not None:
        n = datasets.dump(dataset, dump, force, list(sources))
        console.stderr().print(f"wrote {n} rows to {dump}", highlight=False)
        return
    if json_out:
        console.print_json({"data": dataset.source, "sha256": dataset.digest, "rows": dataset.rows})
        return
    for line in datasets.jsonl_lines(dataset.rows):
        typer.echo(line)


def _rows(
    sources: list[str], limit: int | None, fraction: float | None, seed: int, shown: int | None, balance: bool = False
):
    """One data set: the sources one after the other, each cut to --fraction (fit-cat's sample) if
    given, the whole cut to --limit (or to `shown` rows when they are only shown)."""
    from loramix.core import data as datasets
    from loramix.core.errors import InputError

    if fraction is not None:
        parts = [rows for _, rows in datasets.sample(sources, fraction, seed, balance)]
    else:
        parts = [datasets.load(s, limit if len(sources) == 1 else None).rows for s in sources]
    rows = [row for part in parts for row in part]
    cut = limit if limit is not None else shown
    if cut is not None and cut < 1:
        raise InputError(f"--limit {cut}: must be at least 1")
    return datasets.Dataset(" + ".join(sources), rows if cut is None else rows[:cut])


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
