"""`loramix merge`: merge adapters without data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from loramix.cli import options
from loramix.core.errors import InputError
from loramix.core.profiles import Profile
from loramix.merge.job import MajoritySign
from loramix.merge.names import MethodName


def merge(
    adapters: Optional[List[Path]] = typer.Argument(None, help="Adapter folders (PEFT layout).", show_default=False),
    method: Optional[MethodName] = typer.Option(
        None, "--method", "-m", case_sensitive=False, show_default=False, help="Merge method; see --list-methods."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder."),
    weights: Optional[str] = typer.Option(
        None, "--weights", "-w", help="One weight per adapter, comma-separated, e.g. 1,0.5 [default: all 1]."
    ),
    density: Optional[float] = typer.Option(
        None, "--density", help="Fraction of entries kept (ties, dare_*, magnitude_prune)."
    ),
    majority_sign: Optional[MajoritySign] = typer.Option(
        None, "--majority-sign", case_sensitive=False, show_default=False, help="TIES sign election [default: total]."
    ),
    rank: Optional[int] = options.rank("Rank of the written adapter [default: sum of input ranks; svd: the largest]."),
    profile: Profile = options.profile(),
    cat_weights: Optional[Path] = typer.Option(
        None,
        "--cat-weights",
        help="fit-cat's α table (its output folder or cat_weights.json): rebuild the adapter with -m cat [adapters default to the table's].",
    ),
    into_base: Optional[str] = typer.Option(
        None, "--into-base", help="Write a full merged model on this base instead of an adapter."
    ),
    base: Optional[str] = options.base(
        help="The base the adapters are for: every module's shape is checked against it, and adapters that record "
        "it spelled otherwise (or another base) are merged onto it with a warning [default: the one they record].",
    ),
    list_methods: bool = typer.Option(False, "--list-methods", help="List the merge methods and exit."),
    seed: int = options.seed("DARE's random drops and the randomized SVD"),
    force: bool = options.force(),
    json_out: bool = options.json_out(),
) -> None:
    """Merge adapters without data, exactly on the deltas ΔW = s·B·A.

    linear and cat are exact concatenations (rank Σr, zero error). ties, dare_linear, dare_ties and
    magnitude_prune give full-rank deltas that are factored back to --rank by truncated SVD, with
    the relative error of each module reported.

    --cat-weights rebuilds a fit-cat result from its α table (one weight per adapter per layer or
    module), e.g. at another --rank or --profile, or after editing the table.

    Example: loramix merge math/ code/ -m ties --density 0.2 --weights 1,1 -o merged/
    """
    from loramix.cli.render import console, progress, views

    if list_methods:
        _list_methods(json_out)
        return
    if method is None and cat_weights is not None:
        method = MethodName.cat
    if method is None or out is None:
        raise InputError("merge needs --method and --out", hint="loramix merge A/ B/ -m linear -o merged/")
    from loramix.merge.job import MergeRequest, run_merge

    req = MergeRequest(
        adapters=list(adapters or []),
        method=method.value,
        out=out,
        weights=_parse_weights(weights),
        density=density,
        majority_sign=majority_sign.value if majority_sign else None,
        rank=rank,
        profile=profile.value,
        into_base=into_base,
        seed=seed,
        force=force,
        cat_weights=cat_weights,
        base=base,
    )
    if cat_weights is not None:
        from loramix.soup.rebuild import rebuild

        report = rebuild(req, progress.progress)
    else:
        report = run_merge(req, progress.progress)
    for message in report.warnings:
        console.warning(message)
    if json_out:
        console.print_json(report.to_json())
    else:
        console.stdout().print(views.merge_summary(report))


def _parse_weights(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"--weights must be numbers separated by commas, got {text!r}")
    if not all(math.isfinite(w) for w in weights):
        raise InputError(f"--weights must be finite numbers, got {text!r}")
    return weights


def _list_methods(json_out: bool) -> None:
    from loramix.cli.render import console, views
    from loramix.merge.methods import REGISTRY

    rows = [
        {
            "name": m.name,
            "kind": m.kind,
            "options": ["--weights", "--rank"] + ["--" + o.replace("_", "-") for o in m.options],
            "default_density": m.default_density,
            "summary": m.summary,
            "paper": m.paper,
        }
        for m in REGISTRY.values()
    ]
    if json_out:
        console.print_json({"methods": rows})
    else:
        console.stdout().print(views.methods_table(rows))
