"""fit-cat --method lorahub: LoraHub's gradient-free search for one weight per adapter.

The objective of weights w (one per adapter) is the mean completion-token loss, on the first
SEARCH_ROWS of the sample's (shuffled) training rows, of W = W0 + Σ_i w_i · s_i · B_i · A_i (the exact linear merge; LoraHub itself
averages A and B separately) plus LoraHub's L1 term 0.05 · Σ_i |w_i|. CMA-ES (the `cma` package)
searches w in [-1.5, 1.5]^k from 1/k each, one generation at a time, for at most --budget
evaluations, its sampling seeded from --seed. The best w by objective is written exactly as CAT's α
would be with --granularity global: one ordinary adapter plus the α table
(docs/architecture.md, LoraHub).
"""

from __future__ import annotations

import dataclasses
import math
import time

from loramix.core.errors import EXIT_INTERRUPTED, LoramixError
from loramix.soup import fit
from loramix.soup.report import FitReport
from loramix.train import loop

L1 = 0.05  # LoraHub's weight on Σ|w|
BOUND = 1.5  # each weight stays in [-BOUND, BOUND]
SIGMA = 0.5  # CMA-ES's initial step size
SEARCH_ROWS = 64  # rows each evaluation scores (LoraHub itself uses a few examples per task)


def objective(f: fit.Fitting, w: list[float]) -> tuple[float, float]:
    """(objective, loss) of weights w: the search rows' loss with α = w, plus the L1 term."""
    import torch

    assert f.alpha is not None
    with torch.no_grad():
        f.alpha.raw[0] = torch.tensor(w, dtype=f.alpha.raw.dtype)
    loss = loop.validation_loss(f.run, f.run.train[:SEARCH_ROWS])
    assert loss is not None  # prepare refuses a sample without training rows
    return loss + L1 * sum(abs(x) for x in w), loss


def search(f: fit.Fitting, report, stop) -> tuple[list[float], loop.History]:
    """CMA-ES over w; returns the best w and a history with one 'step' per evaluation."""
    import warnings

    with warnings.catch_warnings():  # cma warns at import that it cannot plot
        warnings.simplefilter("ignore")
        import cma

    c, k = f.config, len(f.adapters)
    options = {"bounds": [-BOUND, BOUND], "seed": c.seed + 1, "verbose": -9, "CMA_diagonal": False}
    es = cma.CMAEvolutionStrategy([1.0 / k] * k, SIGMA, options)  # seed 0 would mean "from the clock"
    history, began = loop.History(), time.time()
    best = (math.inf, [1.0 / k] * k, 0)
    report(0, None)
    while len(history.loss) + es.popsize <= c.budget and not es.stop():
        candidates = es.ask()
        values = []
        for x in candidates:
            w = [float(v) for v in x]
            value, loss = objective(f, w)
            values.append(value)
            history.loss.append(round(loss, 5))
            if value < best[0]:
                best = (value, w, len(history.loss))
            history.seconds = round(time.time() - began, 2)
            report(len(history.loss), {"loss": loss, "tokens_per_s": 0.0, "val_loss": None})
        es.tell(candidates, values)
        if stop() and len(history.loss) < c.budget:
            return _interrupted(f, best, history)
    f.best = {"val_loss": None, "step": best[2], "raw": None}
    return best[1], history


def _interrupted(f: fit.Fitting, best, history: loop.History):
    written = _write(f, best[1], best[2], history, interrupted=True)
    raise LoramixError(
        f"interrupted after {len(history.loss)} of {f.config.budget} evaluations; wrote {f.config.out} with "
        f"the weights of evaluation {written.chosen_step}",
        exit_code=EXIT_INTERRUPTED,
    )


def _write(f: fit.Fitting, w: list[float], chosen: int, history: loop.History, interrupted: bool = False):
    import torch

    assert f.alpha is not None
    raw = torch.tensor([w], dtype=f.alpha.raw.dtype)
    with torch.no_grad():
        f.alpha.raw.copy_(raw)
    val = loop.validation_loss(f.run)
    if val is not None:
        history.val.append({"epoch": 1.0, "step": chosen, "loss": round(val, 5)})
    f.best = {"val_loss": val, "step": chosen, "raw": raw}
    report = fit.write(f, history, interrupted)
    return report


def run_search(c: fit.CatConfig, report_factory) -> FitReport:
    """prepare (α global and free) -> search -> write; the first Ctrl-C writes the best so far."""
    from loramix.core.interrupt import stop_on_interrupt

    c = dataclasses.replace(c, granularity="global", param="free", init=1.0 / len(c.adapters))
    f = fit.prepare(c)
    f.run.steps = c.budget
    f.val0 = loop.validation_loss(f.run)
    with stop_on_interrupt() as stop:
        with report_factory(c.budget) as report:
            w, history = search(f, report, stop)
        return _write(f, w, f.best["step"], history)
