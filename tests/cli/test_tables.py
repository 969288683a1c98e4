"""The main tables, pinned: fixed reports drawn without colour at a fixed width must print exactly
this text (a change to a table is a change to these strings, made on purpose)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from loramix.cli.render import views
from loramix.evaluate.report import EvalReport, EvalSettings, EvalSetup, ModelScore
from loramix.merge.report import InputAdapter, MergeReport, Span
from loramix.soup.report import DataSample, FitReport, SkillAdapter
from loramix.train.loop import History
from loramix.train.report import TrainLog, TrainOptions, TrainSetup


def text(*parts) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, color_system=None, force_terminal=False, highlight=False)
    for part in parts:
        console.print(part)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def merge_report(**kw) -> MergeReport:
    fields = dict(
        version="0.1.0",
        out="soup",
        method="ties",
        kind="factored",
        profile="peft",
        into_base=None,
        adapters=[InputAdapter("math", "loramix-tiny", "ab"), InputAdapter("code", "loramix-tiny", "cd")],
        weights=[1.0, 0.5],
        cat_weights=None,
        density=0.2,
        majority_sign="total",
        seed=0,
        error_max=0.0123,
        error_mean=0.00456,
        modules=56,
        seconds=1.234,
        rank=Span(64, 64),
        errors={},
        dtype="float32",
    )
    fields.update(kw)
    return MergeReport(**fields)


def test_merge_summary():
    assert (
        text(views.merge_summary(merge_report()))
        == """\
merged
method      ties (factored)
adapters    math, code
weights     1, 0.5
density     0.2
rank        64
profile     peft
rel. error  max 0.0123, mean 0.00456
modules     56
out         soup
time        1.23 s
"""
    )


def test_merge_summary_of_a_full_model_from_an_alpha_table():
    report = merge_report(
        method="cat",
        kind="exact",
        weights=None,
        cat_weights="fit/",
        density=None,
        into_base="loramix-tiny",
        base="/models/tiny",
        profile=None,
        error_max=0.0,
        error_mean=0.0,
    )
    assert (
        text(views.merge_summary(report))
        == """\
merged
method    cat (exact)
adapters  math, code
weights   α table fit/
written   full model on /models/tiny
modules   56
out       soup
time      1.23 s
"""
    )


def test_train_summary():
    setup = TrainSetup(
        base="loramix-tiny",
        data="builtin:math",
        data_sha256="0" * 64,
        rows=4000,
        rows_too_long=0,
        train_rows=3800,
        val_rows=200,
        rows_per_step=16,
        device="cpu",
        dtype="float32",
        threads=2,
    )
    options = TrainOptions(
        rank=32,
        alpha=64.0,
        targets=["q_proj"],
        lr=1e-3,
        epochs=2,
        max_steps=None,
        batch_size=16,
        grad_accum=1,
        max_length=256,
        val_fraction=0.05,
        warmup=0.05,
        seed=0,
        load_in_4bit=False,
        limit=None,
    )
    history = History(
        loss=[2.5, 0.51234],
        val=[{"epoch": 1.0, "step": 1, "loss": 0.9}, {"epoch": 2.0, "step": 2, "loss": 0.61234}],
        tokens=123456,
        seconds=75.0,
    )
    log = TrainLog("0.1.0", setup, options, 1, history)
    assert (
        text(views.train_summary(log, Path("math")))
        == """\
trained
adapter          math
base             loramix-tiny
data             builtin:math (3800 train, 200 val rows)
steps            2
final loss       0.5123
validation loss  0.6123 (epoch 1: 0.9)
time             1m15s, 123,456 tokens, 1,646 tok/s
"""
    )


def test_fit_cat_view():
    report = FitReport(
        granularity="layer",
        param="free",
        groups=["0", "1"],
        alpha=[[0.5, 1.25], [0.75, None]],
        adapters=[SkillAdapter("math", "/a/math", "ab"), SkillAdapter("code", "/a/code", "cd")],
        version="0.1.0",
        base="loramix-tiny",
        init=0.5,
        chosen_step=12,
        best_val_loss=0.43219,
        data=[DataSample("builtin:math", 4000, 200, "x")],
        lr=0.1,
        steps=24,
        planned_steps=24,
        tokens=9876,
        seconds=9.0,
        rank={"min": 64, "max": 64},
        svd_error={"max": 0.0, "mean": 0.0},
    )
    assert (
        text(*views.cat_view(report, "soup", color=False))
        == """\
fitted
adapter          soup
base             loramix-tiny
skills           math (/a/math), code (/a/code)
data             builtin:math (200 of 4000)
α                layer, free, init 0.5, lr 0.1
steps            24 of 24
validation loss  0.4322 (α of step 12)
written          rank 64, exact
time             9s, 9,876 tokens

α per layer
    math   code
0  ░ 0.5 █ 1.25
1 ▒ 0.75      ·
scale 0.5 … 1.25   shades '░▒▓█' low → high
"""
    )


def eval_report(metric: str, models: list[ModelScore]) -> EvalReport:
    setup = EvalSetup(base="loramix-tiny", device="cpu", dtype="float32", threads=1, load_in_4bit=False)
    settings = EvalSettings(
        max_new_tokens=64,
        batch_size=32,
        stop=["\n"],
        few_shot=None,
        few_shot_chars=0,
        chat_template=False,
        tolerance=1e-4,
        timeout=5.0,
        max_length=1024,
        limit=None,
        seed=0,
    )
    return EvalReport("0.1.0", "builtin:math:eval", "0" * 64, 200, metric, setup, settings, models)


def test_eval_table():
    models = [
        ModelScore(0.02, (0.0078, 0.0503), 200, 1000, 2.0, correct=4, name="base"),
        ModelScore(0.965, (0.9295, 0.9829), 200, 1200, 0.0, correct=193, name="math", adapter="/a/math"),
    ]
    assert (
        text(views.eval_table(eval_report("exact", models)))
        == """\
builtin:math:eval (200 items, metric exact)

  model   score   95% interval   items   tok/s
 ──────────────────────────────────────────────
  base     2.0%       0.8–5.0%     200     500
  math    96.5%     93.0–98.3%     200       -

base loramix-tiny; 95% intervals (Wilson)
"""
    )


def test_eval_table_of_losses():
    models = [ModelScore(1.23456, (1.2, 1.3), 200, 5000, 1.0, perplexity=3.43689, name="base")]
    assert (
        text(views.eval_table(eval_report("loss", models)))
        == """\
builtin:math:eval (200 items, metric loss)

  model     loss   perplexity    95% interval   items   tok/s
 ─────────────────────────────────────────────────────────────
  base    1.2346        3.437   1.2000–1.3000     200   5,000

base loramix-tiny; 95% intervals (bootstrap)
"""
    )
