"""`loramix merge`: merge adapters without data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from loramix.core.errors import InputError


def merge(
    adapters: Optional[List[Path]] = typer.Argument(None, help="Adapter folders (PEFT layout).", show_default=False),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Merge method; see --list-methods."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="One weight per adapter, e.g. 1,0.5 [default: all 1]."),
    density: Optional[float] = typer.Option(None, "--density", help="Fraction of entries kept (ties, dare_*, magnitude_prune)."),
    majority_sign: Optional[str] = typer.Option(None, "--majority-sign", help="TIES sign election: total or frequency [default: total]."),
    rank: Optional[int] = typer.Option(None, "--rank", "-r", help="Rank of the written adapter [default: sum of input ranks; svd: the largest]."),
    profile: str = typer.Option("peft", "--profile", help="peft (ranks per module) or portable (uniform rank, alpha == r, for vLLM and llama.cpp)."),
    cat_weights: Optional[Path] = typer.Option(None, "--cat-weights", help="fit-cat's α table (its output folder or cat_weights.json): rebuild the adapter with -m cat [adapters default to the table's]."),
    into_base: Optional[str] = typer.Option(None, "--into-base", help="Write a full merged model on this base instead of an adapter."),
    list_methods: bool = typer.Option(False, "--list-methods", help="List the merge methods and exit."),
    seed: int = typer.Option(0, "--seed", help="Seed for DARE's random drops and the randomized SVD."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace --out if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
) -> None:
    """Merge adapters without data, exactly on the deltas ΔW = s·B·A.

    linear and cat are exact concatenations (rank Σr, zero error). ties, dare_linear, dare_ties and
    magnitude_prune give full-rank deltas that are factored back to --rank by truncated SVD, with
    the relative error of each module reported.

    --cat-weights rebuilds a fit-cat result from its α table (one weight per adapter per layer or
    module), e.g. at another --rank or --profile, or after editing the table.

    Example: loramix merge math/ code/ -m ties --density 0.2 --weights 1,1 -o merged/
    """
    from loramix.cli import render

    if list_methods:
        _list_methods(json_out)
        return
    if method is None and cat_weights is not None:
        method = "cat"
    if method is None or out is None:
        raise InputError("merge needs --method and --out", hint="loramix merge A/ B/ -m linear -o merged/")
    from loramix.merge.job import MergeRequest, run_merge

    req = MergeRequest(
        adapters=list(adapters or []), method=method, out=out, weights=_parse_weights(weights),
        density=density, majority_sign=majority_sign, rank=rank, profile=_check_profile(profile),
        into_base=into_base, seed=seed, force=force, cat_weights=cat_weights,
    )
    report = run_merge(req, progress=render.progress)
    for message in report["warnings"]:
        render.warning(message)
    if json_out:
        render.print_json(report)
    else:
        render.stdout().print(render.merge_summary(report))


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


def _check_profile(profile: str) -> str:
    from loramix.core.profiles import PROFILES

    if profile not in PROFILES:
        raise InputError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    return profile


def _list_methods(json_out: bool) -> None:
    from loramix.cli import render
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
        render.print_json({"methods": rows})
    else:
        render.stdout().print(render.methods_table(rows))
