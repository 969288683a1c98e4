"""`merge -m cat --cat-weights TABLE`: rebuild a fit-cat adapter from its α table alone, through
the merge job, with one weight per adapter per module (loramix.soup.table); a rank-slot table
first scales each adapter's B column by column."""

from __future__ import annotations

from collections.abc import Callable

from loramix.core.errors import InputError
from loramix.merge.job import MergeRequest, no_progress, run_merge
from loramix.merge.report import MergeReport
from loramix.soup import table


def rebuild(req: MergeRequest, progress: Callable = no_progress) -> MergeReport:
    """The merge `req` asks for, weighted by the α table req.cat_weights (which must be set).
    Adapters default to the ones the table records; given ones must be those, in its order."""
    file = req.cat_weights
    assert file is not None
    if req.method != "cat":
        raise InputError(f"--cat-weights applies to -m cat, not -m {req.method}")
    if req.weights is not None:
        raise InputError("--weights and --cat-weights both set the weights; give one")
    doc = table.read(file)
    if doc.get("method") == "tuned-cat":
        raise InputError(
            f"{table.table_path(file)}: comes from fit-cat -m tuned-cat, whose adapter was trained after α was fitted",
            hint="its α alone does not rebuild it; use the adapter fit-cat wrote",
        )
    if not req.adapters:
        req.adapters = table.recorded_paths(doc, file)

    def per_module(adapters: list) -> dict[str, list[float]]:
        table.check_adapters(doc, adapters, file)
        if doc["granularity"] == "rank":
            return table.scale_slots(doc, adapters, file)
        return table.module_weights(doc, adapters, file)

    return run_merge(req, progress, per_module)
