"""fit-cat --method moe | arrow: a routed mixture of the frozen skill LoRAs (core/routing.py).

moe: one router per wrapped module (a linear map from the module's input to k logits, from zero,
so every token starts at 1/k of each skill) trained on the same sample and loop as CAT's α, the
routers with the best validation loss kept. arrow: the routers are set from the adapters alone
(each expert's top right singular vector) and nothing is trained; the sample only measures the
validation loss. Either way the result is a routed folder that `loramix eval` scores, with the fit's
report in its manifest; its table holds each expert's mean routing share per layer on the
validation rows (the α table's place).
"""

from __future__ import annotations

import torch

from loramix.core import dist, routing
from loramix.soup import fit
from loramix.soup.report import FitReport
from loramix.soup.table import groups
from loramix.train import loop

SHARE_ROWS = 64  # validation rows the routing shares are measured on


def wrapper(c: fit.CatConfig):
    """The `wrap` of fit.prepare: routers on every targeted linear, only a moe's trainable."""

    def wrap(model, adapters):
        for p in model.parameters():
            p.requires_grad_(False)
        device = next(model.parameters()).device
        kind = "learned" if c.method == "moe" else "arrow"
        deltas = routing.build(adapters, kind, c.top_k, c.temperature)
        routers = routing.Routers(deltas).to(device)
        for p in routers.parameters():
            p.requires_grad_(kind == "learned")
        model.loramix_routers = routers  # registered, so the loop finds (and checkpoints) its parameters
        routing.attach(model, dict(routers.items()))
        return routers

    return wrap


def _state(f: fit.Fitting) -> dict:
    return {n: p.detach().clone() for n, p in f.routers.named_parameters()}


def run_routed(c: fit.CatConfig, report_factory) -> FitReport:
    """prepare -> train the routers (moe) keeping the best by validation loss -> write the folder.
    The first Ctrl-C writes the mixture with the best routers so far and exits 130."""
    from loramix.core.interrupt import stop_on_interrupt

    f = fit.prepare(c, wrap=wrapper(c))
    c = f.config
    f.val0 = loop.validation_loss(f.run)
    f.best = {"val_loss": f.val0, "step": 0, "raw": _state(f)}
    if c.method == "arrow":
        f.run.steps = 0
        return write(f, loop.History())

    with stop_on_interrupt() as stop:
        with report_factory(f.run.steps) as report:
            history = fit.train_keeping_best(
                f, report, stop, lambda: _state(f), lambda h: write(f, h, interrupted=True), "routers"
            )
        return write(f, history)


def shares(f: fit.Fitting) -> tuple[list[str], list[list]]:
    """(layer labels, each expert's mean routing share per layer): gates averaged over the tokens
    of up to SHARE_ROWS validation rows (training rows if there are none), one row at a time so
    that no padding is counted, then over the layer's modules."""
    rows = (f.run.val or f.run.train)[:SHARE_ROWS]
    items = f.routers.items()
    sums = {name: torch.zeros(len(f.adapters)) for name, _ in items}
    hooks = []
    for name, delta in items:
        hooks.append(delta.register_forward_hook(_recorder(sums[name], delta)))
    try:
        with torch.no_grad():
            for example in rows:
                loop.batch_loss(f.run, [example])
    finally:
        routing.detach(hooks)
    labels, group = groups(sorted(sums), "layer")
    table = []
    for g in range(len(labels)):
        members = [sums[n] for n in sums if group[n] == g]
        total = torch.stack(members).sum(0)
        present = total > 0
        mean = total / total.sum()
        table.append([round(float(v), 6) if present[i] else None for i, v in enumerate(mean)])
    return labels, table


def _recorder(total: torch.Tensor, delta: routing.RoutedDelta):
    def record(_module, inputs, _output):
        x = inputs[0].to(delta.A.dtype)
        total.add_(delta.gates(x).reshape(-1, total.numel()).sum(0).cpu())

    return record


def write(f: fit.Fitting, history: loop.History, interrupted: bool = False) -> FitReport:
    from loramix import __version__
    from loramix.core.outputs import atomic_dir

    c = f.config
    with torch.no_grad():
        for n, p in f.routers.named_parameters():
            p.copy_(f.best["raw"][n])
    labels, table = shares(f)
    report = fit.fit_report(f, None, history, interrupted)
    report.granularity, report.param, report.init = "layer", "router", None
    report.groups, report.alpha = labels, table
    items = f.routers.items()
    manifest = routing.Manifest(
        kind="learned" if c.method == "moe" else "arrow",
        base=f.base,
        experts=[a.name for a in f.adapters],
        modules=[name for name, _ in items],
        top_k=items[0][1].top_k,
        temperature=c.temperature,
        version=__version__,
        extra={"fit": report.to_json()},
    )
    if dist.is_main():  # every process holds the same routers: the first writes the result
        with atomic_dir(c.out, c.force) as tmp:
            routing.save(tmp, manifest, f.adapters, dict(items))
    dist.barrier()
    return report
