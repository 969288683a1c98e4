"""`loramix demo`: the whole pipeline on the bundled tiny model (not built yet)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loramix.errors import LoramixError


def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for everything the demo writes [default: ./loramix-demo]."),
    quick: bool = typer.Option(False, "--quick", help="Smaller budgets, same table."),
) -> None:
    """Run the skill-composition pipeline on the bundled tiny model.

    Not available yet: it needs the bundled model, train-skill, fit-cat and eval.
    """
    raise LoramixError(
        "not yet: the demo needs the bundled tiny model, train-skill, fit-cat and eval, which are not built yet",
        hint="what works today: loramix merge (exact data-free merges) and loramix inspect",
        exit_code=1,
    )
