"""The tables and pictures each command prints, drawn from its typed report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from loramix.cli.render.cells import fmt_num, fmt_seconds, fmt_span, heatmap, key_value_table, short

if TYPE_CHECKING:
    from loramix.evaluate.report import EvalReport
    from loramix.inspect.report import AdapterSummary, CatView, Comparison
    from loramix.merge.report import MergeReport
    from loramix.soup.report import FitReport
    from loramix.train.report import TrainLog


def merge_summary(report: MergeReport) -> Table:
    rows = [
        ("method", f"{report.method} ({'exact' if report.exact else report.kind})"),
        ("adapters", ", ".join(a.path for a in report.adapters)),
        (
            "weights",
            f"α table {report.cat_weights}"
            if report.cat_weights
            else ", ".join(fmt_num(w) for w in report.weights or []),
        ),
    ]
    if report.density is not None:
        rows.append(("density", fmt_num(report.density)))
    if report.into_base:
        rows.append(("written", f"full model on {report.base}"))
    else:
        assert report.rank is not None
        rows.append(("rank", fmt_span(report.rank.to_json())))
        rows.append(("profile", str(report.profile)))
        rows.append(("rel. error", f"max {fmt_num(report.error_max)}, mean {fmt_num(report.error_mean)}"))
    rows += [("modules", str(report.modules)), ("out", report.out), ("time", f"{report.seconds:.2f} s")]
    return key_value_table("merged", rows)


def methods_table(rows: list[dict]) -> Table:
    from rich import box

    table = Table(
        title="merge methods",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption="all take --weights and --rank",
        caption_justify="left",
    )
    table.add_column("method", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("options")
    table.add_column("what it does", overflow="fold")
    for r in rows:
        extra = [o for o in r["options"] if o not in ("--weights", "--rank")]
        if r["default_density"]:
            extra[0] += f" {r['default_density']}"
        table.add_row(r["name"], r["kind"], "\n".join(extra) or "-", f"{r['summary']}\n[dim]{r['paper']}[/dim]")
    return table


def adapter_view(r: AdapterSummary, color: bool) -> list:
    """`inspect ADAPTER`: the summary table and the ‖ΔW‖ heatmap."""
    size = f"{r.size_bytes / 1e6:.2f} MB" if r.size_bytes is not None else "-"
    summary = key_value_table(
        r.path,
        [
            ("base", r.base),
            ("rank", fmt_span(r.rank)),
            ("alpha", str(r.lora_alpha) + (" (rsLoRA)" if r.use_rslora else "")),
            ("scale", fmt_span(r.scale, fmt_num)),
            ("targets", ", ".join(r.targets)),
            ("modules", f"{r.modules} in {r.layers} layers"),
            ("parameters", f"{r.parameters:,}"),
            ("dtype", f"{r.dtype} ({size})"),
        ],
    )
    g = r.delta_norm
    notes = [f"cannot be merged: {p}" for p in r.problems]
    notes += [f"holds copies of the base's {', '.join(r.base_copies)} (checked against a base, then left out)"] * bool(
        r.base_copies
    )
    picture = heatmap("‖ΔW‖_F per layer and module", g.rows, short(g.cols), g.values, color=color) if g.rows else ""
    return [summary, *notes, "", picture]


def compare_view(r: Comparison, color: bool) -> list:
    """`inspect A B`: per-layer cosine and sign conflicts, and the cosine heatmap."""
    table = Table(title=f"{r.a}  vs  {r.b}", title_justify="left", box=None)
    for col in ("layer", "cosine", f"sign conflicts (density {fmt_num(r.density)})", "‖ΔW‖ a", "‖ΔW‖ b"):
        table.add_column(col, justify="right")
    for row in r.layers + [r.overall]:
        rate = row.conflict_rate
        table.add_row(
            row.layer,
            fmt_num(row.cosine),
            "-" if rate is None else f"{100 * rate:.1f}%",
            fmt_num(row.norm_a),
            fmt_num(row.norm_b),
        )
    parts: list = [table]
    for only, side in ((r.only_in_a, r.a), (r.only_in_b, r.b)):
        if only:
            parts.append(f"{len(only)} modules only in {side}")
    g = r.cosine
    parts += [
        "",
        heatmap("cosine similarity of the deltas", g.rows, short(g.cols), g.values, color=color, lo=-1.0, hi=1.0),
    ]
    return parts


def train_summary(log: TrainLog, out: Path) -> Table:
    s, val_loss = log.setup, log.history.val
    val = val_loss[-1]["loss"] if val_loss else None
    first_val = val_loss[0]["loss"] if val_loss else None
    epoch1 = "" if len(val_loss) < 2 else f" (epoch 1: {fmt_num(first_val, 4)})"
    rows = [
        ("adapter", str(out)),
        ("base", s.base),
        ("data", f"{s.data} ({s.train_rows} train, {s.val_rows} val rows)"),
        ("steps", str(log.steps)),
        ("final loss", fmt_num(log.final_loss, 4)),
        ("validation loss", "-" if val is None else fmt_num(val, 4) + epoch1),
        (
            "time",
            f"{fmt_seconds(log.history.seconds)}, {log.history.tokens:,} tokens, "
            f"{log.tokens_per_second or 0:,.0f} tok/s",
        ),
    ]
    return key_value_table("trained", rows)


def skills_table(rows: list[dict]) -> Table:
    table = Table(title="built-in skills", title_justify="left")
    for col in ("data", "task", "rows (train / eval)"):
        table.add_column(col)
    for r in rows:
        task = r["summary"] + ("  \\[held out]" if r["held_out"] else "")
        table.add_row(r["name"], task, f"{r['train_rows']} / {r['eval_rows']}")
    return table


def cat_view(r: FitReport, out: str, color: bool) -> list:
    """A fit-cat result: a summary and the α heatmap (layers down, adapters across). Fields a
    hand-made table lacks are left out."""
    from loramix.inspect.report import cat_heatmap

    rows = [
        ("adapter", out),
        ("base", r.base or "-"),
        ("skills", ", ".join(f"{a.name} ({a.path})" for a in r.adapters)),
        (
            "α",
            f"{r.granularity}, {r.param}"
            + (f", init {r.init}" if r.init is not None else "")
            + (f", lr {r.lr}" if r.lr is not None else ""),
        ),
    ]
    if r.method != "cat":
        rows[3] = ("method", r.method + (f", lr {r.lr}" if r.lr is not None and r.method == "moe" else ""))
    if r.data:
        rows.insert(3, ("data", ", ".join(f"{d.data} ({d.used} of {d.rows})" for d in r.data)))
    if r.steps is not None:
        what = "evaluations" if r.method == "lorahub" else "steps"
        rows.append((what, f"{r.steps} of {r.planned_steps}" + (" (interrupted)" if r.interrupted else "")))
    if r.best_val_loss is not None:
        rows.append(("validation loss", f"{fmt_num(r.best_val_loss, 4)} (α of step {r.chosen_step})"))
    if r.rank is not None:
        error = (r.svd_error or {}).get("max")
        rows.append(
            ("written", f"rank {fmt_span(r.rank)}" + (f", SVD error max {fmt_num(error)}" if error else ", exact"))
        )
    if r.seconds is not None:
        rows.append(("time", f"{fmt_seconds(r.seconds)}, {r.tokens or 0:,} tokens"))
    g = cat_heatmap(r)
    title = {
        "layer": "α per layer",
        "module": "α per layer and module",
        "global": "α",
        "rank": "α per layer and module, mean over rank slots",
    }[r.granularity]
    if r.method in ("moe", "arrow"):
        title = "mean routing share per layer (validation tokens)"
        rows[0] = ("mixture", out)
    return [key_value_table("fitted", rows), "", heatmap(title, g.rows, short(g.cols), g.values, color=color)]


def inspect_cat_view(v: CatView, color: bool) -> list:
    """`inspect FIT-CAT-RESULT`: the fit and the α heatmap."""
    return cat_view(v.report, v.path, color)


def eval_table(r: EvalReport) -> Table:
    """`eval`: one row per model, the metric with its 95% interval, items and tokens/s."""
    from rich import box

    loss = r.metric == "loss"
    table = Table(
        title=f"{r.data} ({r.items} items, metric {r.metric})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption=f"base {r.setup.base}; 95% intervals ({'bootstrap' if loss else 'Wilson'})",
        caption_justify="left",
    )
    table.add_column("model", no_wrap=True)
    for col in (["loss", "perplexity"] if loss else ["score"]) + ["95% interval", "items", "tok/s"]:
        table.add_column(col, justify="right", no_wrap=True)
    for m in r.models:
        lo, hi = m.ci
        if loss:
            cells = [f"{m.score:.4f}", f"{m.perplexity:.3f}", f"{lo:.4f}–{hi:.4f}"]
        else:
            cells = [f"{100 * m.score:.1f}%", f"{100 * lo:.1f}–{100 * hi:.1f}%"]
        rate = "-" if m.tokens_per_second is None else f"{m.tokens_per_second:,.0f}"
        table.add_row(m.name, *cells, str(m.items_scored), rate)
    return table


DEMO_SAMPLE_MIX = "data mix, CAT's 5%"


def demo_view(doc: dict, out: Path, color: bool) -> list:
    """`demo`: the comparison table, CAT's gain against the single skills', α, the commands."""
    import json

    from rich import box

    n = doc["budget"]["eval"]
    table = Table(
        title=f"accuracy on {n} eval items per task",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption="math-code: the held-out composite, programs run; kept: the share of the skill LoRA's "
        "own accuracy a model keeps",
        caption_justify="left",
    )
    for col in ("model", "math-code", "math", "code", "kept math", "kept code"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for r in doc["rows"]:
        table.add_row(
            r["model"],
            pct(r["math-code"]),
            pct(r["math"]),
            pct(r["code"]),
            pct(r["retention"]["math"]),
            pct(r["retention"]["code"]),
        )
    gains = doc["single_gains"]
    by_model = {r["model"]: r["math-code"] for r in doc["rows"]}
    line = (
        f"CAT's gain on math-code over the base: {100 * doc['cat_gain']:+.1f} points; the math LoRA's "
        f"{100 * gains['math']:+.1f}, the code LoRA's {100 * gains['code']:+.1f}: "
        f"{'super-linear' if doc['super_linear'] else 'not super-linear'} (more than the single skills' "
        f"gains together).\nBest on math-code: {doc['best_composite']} ({pct(doc['best_score'])}); "
        + ", ".join(
            f"{label} {pct(by_model.get(model))}"
            for model, label in (
                ("data mix", "the data mix on all the rows"),
                (DEMO_SAMPLE_MIX, "on CAT's 5%"),
                ("tuned CAT", "tuned CAT"),
                ("CAT", "CAT"),
            )
            if model != doc["best_composite"]
        )
        + "."
    )
    from loramix.soup.report import FitReport

    cat = FitReport.from_json(json.loads((Path(out) / "cat" / "cat_weights.json").read_text()))
    alpha = cat_view(cat, str(Path(out) / "cat"), color)[-1]
    steps = "\n".join(doc["commands"])
    return [table, line, "", alpha, "", f"The same with the commands ({doc['total_seconds']:.0f} s here):", steps]
