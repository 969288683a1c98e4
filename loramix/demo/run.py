"""The demo's steps, run through the commands' own job functions, each timed (see plan.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from loramix.core import log
from loramix.demo import plan
from loramix.demo.plan import CAT_OPTIONS, FITS, MERGES, METRICS, SKILLS, DemoConfig

if TYPE_CHECKING:
    from loramix.merge.report import MergeReport
    from loramix.soup.report import FitReport
    from loramix.train.report import TrainLog


def run_demo(c: DemoConfig, train_progress, item_progress) -> dict:
    """Train, fit, merge and score; writes demo.json beside the adapters and returns it. Each
    step is announced through loramix.core.log."""
    plan.prepare_folder(c)
    began, seconds = time.perf_counter(), {}

    def step(name: str, fn, *args):
        log.note(f"demo: {name}")
        t = time.perf_counter()
        result = fn(*args)
        seconds[name] = round(time.perf_counter() - t, 1)
        return result

    logs = [
        step(f"train the {s} skill LoRA", train_skill, c, f"builtin:{s}", c.out / s, train_progress) for s in SKILLS
    ]
    mix_steps = logs[0].steps  # the same steps budget as a skill LoRA
    step(
        "train the data-mix LoRA (both skills' rows)",
        train_skill,
        c,
        str(plan.write_mix(c)),
        c.out / "mix",
        train_progress,
        mix_steps,
    )
    step(
        "train the data-mix LoRA on CAT's 5% sample",
        train_skill,
        c,
        str(plan.write_sample(c)),
        c.out / "mix-sample",
        train_progress,
        mix_steps,
    )
    for name, (folder, method) in FITS.items():
        step(f"fit {name} (fit-cat -m {method}, 5% of each skill's data)", fit, c, folder, method, train_progress)
    for name, (folder, method, weights) in MERGES.items():
        step(f"merge {name}", merge, c, folder, method, weights)
    evals = {
        task: step(f"score {task} ({metric})", score, c, task, metric, item_progress)
        for task, metric in METRICS.items()
    }
    doc = {
        "out": str(c.out),
        "quick": c.quick,
        "seed": c.seed,
        "budget": c.budget,
        "cat_options": CAT_OPTIONS,
        **plan.table(evals),
        "seconds": seconds,
        "total_seconds": round(time.perf_counter() - began, 1),
        "mix_steps": mix_steps,
        "commands": plan.commands(c, mix_steps),
    }
    plan.save_json(c.out / "demo.json", doc)
    return doc


def train_skill(c: DemoConfig, data: str, out: Path, progress, max_steps: int | None = None) -> TrainLog:
    from loramix.train.skill import TrainConfig, run_training

    limit = c.budget["rows"] if data.startswith("builtin:") else None
    config = TrainConfig(data=data, out=out, limit=limit, max_steps=max_steps, seed=c.seed, threads=c.threads)
    return run_training(config, lambda total: progress(out.name, total))


def fit(c: DemoConfig, folder: str, method: str, progress) -> FitReport:
    from loramix.soup.fit import CatConfig
    from loramix.soup.job import run_fit

    config = CatConfig(
        adapters=[c.out / s for s in SKILLS],
        data=[f"builtin:{s}" for s in SKILLS],
        out=c.out / folder,
        method=method,
        seed=c.seed,
        threads=c.threads,
        tune_epochs=c.budget["tune_epochs"],
        **CAT_OPTIONS,
    )
    return run_fit(config, lambda total: progress(folder, total))


def merge(c: DemoConfig, folder: str, method: str, weights: str) -> MergeReport:
    from loramix.merge.job import MergeRequest, run_merge

    request = MergeRequest(
        adapters=[c.out / s for s in SKILLS],
        method=method,
        out=c.out / folder,
        weights=[float(w) for w in weights.split(",")],
        seed=c.seed,
    )
    return run_merge(request)


def score(c: DemoConfig, task: str, metric: str, progress) -> dict:
    from loramix.evaluate.job import EvalConfig, run_eval

    adapters = [c.out / folder for _, folder in plan.models_in_order() if folder]
    config = EvalConfig(
        data=f"builtin:{task}",
        adapters=adapters,
        metric=metric,
        limit=c.budget["eval"],
        max_new_tokens=24,
        batch_size=64,
        seed=c.seed,
        threads=c.threads,
    )
    doc = run_eval(config, progress).to_json()
    plan.save_json(c.out / f"eval-{task}.json", doc)
    return doc
