"""The `fit-cat` job for every --method: CAT and tuned-cat (soup/cat_run.py), LoraHub (soup/hub.py),
or a routed mixture, moe or arrow (soup/route.py), all on the same data sample and preparation."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from loramix.soup import hub, route
from loramix.soup.cat_run import run_cat
from loramix.soup.fit import CatConfig, check_options, with_defaults
from loramix.soup.report import FitReport
from loramix.train import loop


def run_fit(c: CatConfig, report_factory: Callable[[int], AbstractContextManager[loop.Report]]) -> FitReport:
    """Fit with c.method and write its result; returns the report (`--json` prints it)."""
    c = with_defaults(c)
    check_options(c)
    if c.method == "lorahub":
        with loop.memory_errors():
            return hub.run_search(c, report_factory)
    if c.method in ("moe", "arrow"):
        with loop.memory_errors():
            return route.run_routed(c, report_factory)
    return run_cat(c, report_factory)
