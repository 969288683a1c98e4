"""fit-cat's CAT and tuned-cat runs: α trained in the shared loop (the best by validation loss
kept), and for tuned-cat the second stage, the merged adapter's A and B trained on the same rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager

from loramix.core.errors import EXIT_INTERRUPTED, LoramixError
from loramix.soup import fit, layer
from loramix.soup.report import FitReport
from loramix.train import loop


def run_cat(c: fit.CatConfig, report_factory: Callable[[int], AbstractContextManager[loop.Report]]) -> FitReport:
    """prepare -> fit α (keeping the best by validation loss) -> write; returns the α table.
    The first Ctrl-C writes the result with the best α so far and exits 130."""
    with loop.memory_errors():
        return _fit_and_write(c, report_factory)


def _fit_and_write(c: fit.CatConfig, report_factory) -> FitReport:
    from loramix.core.interrupt import stop_on_interrupt

    f = fit.prepare(c)
    assert f.alpha is not None
    f.val0 = loop.validation_loss(f.run)  # α at its start is a candidate too, and the curve's first point
    f.best = {"val_loss": f.val0, "step": 0, "raw": f.alpha.raw.detach().clone()}
    alpha = f.alpha
    with stop_on_interrupt() as stop:
        with report_factory(f.run.steps) as report:
            history = fit.train_keeping_best(
                f, report, stop, lambda: alpha.raw.detach().clone(), lambda h: fit.write(f, h, interrupted=True), "α"
            )
        if c.method == "tuned-cat":
            return tune(f, history, report_factory, stop)
        return fit.write(f, history)


def tune(f: fit.Fitting, history: loop.History, report_factory, stop) -> FitReport:
    """tuned-cat's second stage: the best α folded into B, then A and B trained on the same rows
    (--tune-epochs at --tune-lr); the result is written from the trained factors."""
    import torch

    from loramix.core import models
    from loramix.train.skill import BUNDLED_LR, OTHER_LR

    c = f.config
    assert f.alpha is not None
    with torch.no_grad():
        f.alpha.raw.copy_(fit.chosen(f))
    layer.unfreeze(f.run.model)
    lr = c.tune_lr if c.tune_lr is not None else BUNDLED_LR if f.base == models.BUNDLED else OTHER_LR
    steps, per_epoch = loop.plan_steps(len(f.run.train), c.batch_size, c.grad_accum, c.tune_epochs, None)
    run = dataclasses.replace(
        f.run, settings=dataclasses.replace(f.run.settings, lr=lr), steps=steps, steps_per_epoch=per_epoch
    )
    tuned = loop.History()

    def on_stop(done: loop.History):
        fit.write(f, history, interrupted=True, tuned=(done, lr))
        raise LoramixError(
            f"interrupted after tuning step {len(done.loss)} of {steps}; wrote {c.out} with the factors so far",
            exit_code=EXIT_INTERRUPTED,
        )

    with report_factory(steps) as report:
        tuned = loop.fit(run, report, stop, on_stop)
    return fit.write(f, history, tuned=(tuned, lr))
