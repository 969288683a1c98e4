"""Rich tables and heatmaps: the only module that draws.

Results go to stdout, progress and messages to stderr. Colour follows Rich's detection (off when
NO_COLOR is set or the stream is not a terminal); without colour a heatmap cell is drawn with shade
characters, so the picture survives a pipe or a log file.
"""

from __future__ import annotations

import io
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text



def stdout() -> Console:
    """A console on stdout, made per call so that NO_COLOR, FORCE_COLOR and COLUMNS are read now."""
    return Console(highlight=False, soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)

# dark to bright (viridis-like); text switches to black on the bright half
PALETTE = ["#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725"]
SHADES = " ░▒▓█"


def print_json(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def error(message: str, hint: str | None = None) -> None:
    console = stderr()
    console.print(Text("error: ", style="bold red") + Text(message))
    if hint:
        console.print(Text("hint: ", style="yellow") + Text(hint))


def warning(message: str) -> None:
    stderr().print(Text("warning: ", style="yellow") + Text(message))


@contextmanager
def progress(description: str, total: int) -> Iterator:
    """A progress bar on stderr; yields a function to call once per finished step."""
    with progress_items(description, total) as advance:
        yield lambda *_: advance(1)


@contextmanager
def progress_items(description: str, total: int) -> Iterator:
    """A progress bar on stderr (none when stderr is not a terminal); yields a function called
    with the number of items each chunk of work finished."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = stderr()
    if not console.is_terminal:
        yield lambda n: None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True)
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def training_progress(description: str, total: int) -> Iterator:
    """Per-step progress on stderr: a Rich bar (step, loss, tokens/s, ETA) on a terminal, else a
    plain log line every ~5% of the steps and at every validation. Yields report(step, fields)."""
    import time

    console = stderr()
    if not console.is_terminal:
        every, began, first = max(1, total // 20), time.time(), [None]

        def log(step: int, fields: dict | None) -> None:
            if fields is None:
                first[0] = step
                return
            if step % every and step != total and fields.get("val_loss") is None:
                return
            rate = (step - first[0]) / max(1e-9, time.time() - began)
            console.print(f"{description}: step {step}/{total} {_step_fields(fields)} "
                          f"eta {fmt_seconds((total - step) / rate if rate else 0)}", highlight=False, markup=False)

        yield log
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False)
    with bar:
        task = bar.add_task(description, total=total, info="")

        def update(step: int, fields: dict | None) -> None:
            if fields is None:
                bar.reset(task, total=total, completed=step, info="")
            else:
                bar.update(task, completed=step, info=_step_fields(fields))

        yield update


def _step_fields(fields: dict) -> str:
    text = f"loss {fields['loss']:.4f} {fields['tokens_per_s']:,.0f} tok/s"
    return text + (f" val {fields['val_loss']:.4f}" if fields.get("val_loss") is not None else "")


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def key_value_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    return table


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def compact(x: float) -> str:
    """At most six characters: 4.47, 0.0123, -0.05, 1.2e-05 -> '1e-05'."""
    for text in (f"{x:.3g}", f"{x:.2g}", f"{x:.1g}", f"{x:.0e}"):
        if len(text) <= 6:
            return text
    return f"{x:.0e}"


def heatmap(
    title: str,
    rows: Sequence[str],
    cols: Sequence[str],
    values: Sequence[Sequence[float | None]],
    *,
    color: bool,
    lo: float | None = None,
    hi: float | None = None,
) -> Table:
    """A rows × cols table of values; cells shaded by value between lo and hi (default min, max)."""
    seen = [v for row in values for v in row if v is not None]
    lo = min(seen, default=0.0) if lo is None else lo
    hi = max(seen, default=1.0) if hi is None else hi
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("", style="bold", no_wrap=True)
    for c in cols:
        table.add_column(c, justify="right", no_wrap=True, overflow="ellipsis", max_width=10)
    for label, row in zip(rows, values):
        table.add_row(label, *(_cell(v, lo, hi, color) for v in row))
    legend = f"scale {fmt_num(lo)} … {fmt_num(hi)}" + ("" if color else f"   shades '{SHADES[1:]}' low → high")
    table.caption = Text(legend, no_wrap=True, overflow="ignore")  # as wide as it needs, even past the table
    return table


def _level(v: float, lo: float, hi: float, n: int) -> int:
    t = 0.0 if hi <= lo else (v - lo) / (hi - lo)
    return min(n - 1, max(0, int(t * n)))


def _cell(v: float | None, lo: float, hi: float, color: bool) -> Text:
    if v is None:
        return Text("·")
    label = compact(v)
    if color:
        i = _level(v, lo, hi, len(PALETTE))
        fg = "black" if i >= len(PALETTE) // 2 else "white"
        return Text(f" {label} ", style=f"{fg} on {PALETTE[i]}")
    shade = SHADES[1 + _level(v, lo, hi, len(SHADES) - 1)]
    return Text(f"{shade} {label}")


def color_enabled(console: Console | None = None) -> bool:
    console = console or stdout()
    return console.color_system is not None and not console.no_color


def save_svg(path: Path, renderables: Sequence, title: str) -> None:
    """Render to an SVG file in colour, whatever the terminal supports."""
    rec = Console(record=True, file=io.StringIO(), force_terminal=True, color_system="truecolor", width=100)
    for r in renderables:
        rec.print(r)
    rec.save_svg(str(path), title=title)


def fmt_span(span: dict, fmt=str) -> str:
    """{'min': 4, 'max': 8} -> '4–8'; equal ends -> '4'."""
    return fmt(span["min"]) if span["min"] == span["max"] else f"{fmt(span['min'])}–{fmt(span['max'])}"


def merge_summary(report: dict) -> Table:
    rows = [
        ("method", f"{report['method']} ({'exact' if report['exact'] else report['kind']})"),
        ("adapters", ", ".join(a["path"] for a in report["adapters"])),
        ("weights", f"α table {report['cat_weights']}" if report.get("cat_weights")
         else ", ".join(fmt_num(w) for w in report["weights"])),
    ]
    if report["density"] is not None:
        rows.append(("density", fmt_num(report["density"])))
    if report["into_base"]:
        rows.append(("written", f"full model on {report['base']}"))
    else:
        rows.append(("rank", fmt_span(report["rank"])))
        rows.append(("profile", report["profile"]))
        rows.append(("rel. error", f"max {fmt_num(report['error']['max'])}, mean {fmt_num(report['error']['mean'])}"))
    rows += [("modules", str(report["modules"])), ("out", report["out"]), ("time", f"{report['seconds']:.2f} s")]
    return key_value_table("merged", rows)


def methods_table(rows: list[dict]) -> Table:
    from rich import box

    table = Table(title="merge methods", title_justify="left", box=box.SIMPLE_HEAD,
                  caption="all take --weights and --rank", caption_justify="left")
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


def adapter_view(r: dict, color: bool) -> list:
    """`inspect ADAPTER`: the summary table and the ‖ΔW‖ heatmap."""
    size = f"{r['size_bytes'] / 1e6:.2f} MB" if r["size_bytes"] is not None else "-"
    summary = key_value_table(
        r["path"],
        [
            ("base", r["base"]),
            ("rank", fmt_span(r["rank"])),
            ("alpha", str(r["lora_alpha"]) + (" (rsLoRA)" if r["use_rslora"] else "")),
            ("scale", fmt_span(r["scale"], fmt_num)),
            ("targets", ", ".join(r["targets"])),
            ("modules", f"{r['modules']} in {r['layers']} layers"),
            ("parameters", f"{r['parameters']:,}"),
            ("dtype", f"{r['dtype']} ({size})"),
        ],
    )
    g = r["delta_norm"]
    return [summary, "", heatmap("‖ΔW‖_F per layer and module", g["rows"], _short(g["cols"]), g["values"], color=color)]


def compare_view(r: dict, color: bool) -> list:
    """`inspect A B`: per-layer cosine and sign conflicts, and the cosine heatmap."""
    table = Table(title=f"{r['a']}  vs  {r['b']}", title_justify="left", box=None)
    for col in ("layer", "cosine", f"sign conflicts (density {fmt_num(r['density'])})", "‖ΔW‖ a", "‖ΔW‖ b"):
        table.add_column(col, justify="right")
    for row in r["layers"] + [r["overall"]]:
        rate = row["conflict_rate"]
        table.add_row(
            row["layer"], fmt_num(row["cosine"]), "-" if rate is None else f"{100 * rate:.1f}%",
            fmt_num(row["norm_a"]), fmt_num(row["norm_b"]),
        )
    parts: list = [table]
    for side in ("a", "b"):
        if r[f"only_in_{side}"]:
            parts.append(f"{len(r[f'only_in_{side}'])} modules only in {r[side]}")
    g = r["cosine"]
    parts += ["", heatmap("cosine similarity of the deltas", g["rows"], _short(g["cols"]), g["values"], color=color, lo=-1.0, hi=1.0)]
    return parts


def _short(cols: list[str]) -> list[str]:
    return [c.removesuffix("_proj") for c in cols]


def train_summary(log: dict, out: Path) -> Table:
    val = log["val_loss"][-1]["loss"] if log["val_loss"] else None
    first_val = log["val_loss"][0]["loss"] if log["val_loss"] else None
    rows = [
        ("adapter", str(out)), ("base", log["base"]), ("data", f"{log['data']} ({log['train_rows']} train, {log['val_rows']} val rows)"),
        ("steps", str(log["steps"])), ("final loss", fmt_num(log["final_loss"], 4)),
        ("validation loss", "-" if val is None else fmt_num(val, 4) + ("" if len(log["val_loss"]) < 2 else f" (epoch 1: {fmt_num(first_val, 4)})")),
        ("time", f"{fmt_seconds(log['seconds'])}, {log['tokens']:,} tokens, {log['tokens_per_second'] or 0:,.0f} tok/s"),
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


def cat_view(doc: dict, out: str, color: bool) -> list:
    """A fit-cat result: a summary and the α heatmap (layers down, adapters across). Fields a
    hand-made table lacks are left out."""
    from loramix.inspect.report import cat_heatmap

    get = doc.get
    rows = [("adapter", out), ("base", get("base", "-")),
            ("skills", ", ".join(f"{a.get('name', '?')} ({a.get('path', '?')})" for a in doc["adapters"])),
            ("α", f"{doc['granularity']}, {doc['param']}" + (f", init {get('init')}" if "init" in doc else "")
             + (f", lr {get('lr')}" if "lr" in doc else ""))]
    if "data" in doc:
        rows.insert(3, ("data", ", ".join(f"{d['data']} ({d['used']} of {d['rows']})" for d in doc["data"])))
    if "steps" in doc:
        rows.append(("steps", f"{doc['steps']} of {get('planned_steps')}" + (" (interrupted)" if get("interrupted") else "")))
    if get("best_val_loss") is not None:
        rows.append(("validation loss", f"{fmt_num(doc['best_val_loss'], 4)} (α of step {get('chosen_step')})"))
    if "rank" in doc:
        error = get("svd_error", {}).get("max")
        rows.append(("written", f"rank {fmt_span(doc['rank'])}" + (f", SVD error max {fmt_num(error)}" if error else ", exact")))
    if "seconds" in doc:
        rows.append(("time", f"{fmt_seconds(doc['seconds'])}, {get('tokens', 0):,} tokens"))
    g = cat_heatmap(doc)
    title = {"layer": "α per layer", "module": "α per layer and module", "global": "α"}[doc["granularity"]]
    return [key_value_table("fitted", rows), "", heatmap(title, g["rows"], _short(g["cols"]), g["values"], color=color)]


def eval_table(doc: dict) -> Table:
    """`eval`: one row per model, the metric with its 95% interval, items and tokens/s."""
    from rich import box

    loss = doc["metric"] == "loss"
    table = Table(title=f"{doc['data']} ({doc['items']} items, metric {doc['metric']})", title_justify="left",
                  box=box.SIMPLE_HEAD, caption=f"base {doc['base']}; 95% intervals ({'bootstrap' if loss else 'Wilson'})",
                  caption_justify="left")
    table.add_column("model", no_wrap=True)
    for col in (["loss", "perplexity"] if loss else ["score"]) + ["95% interval", "items", "tok/s"]:
        table.add_column(col, justify="right", no_wrap=True)
    for m in doc["models"]:
        lo, hi = m["ci"]
        if loss:
            cells = [f"{m['score']:.4f}", f"{m['perplexity']:.3f}", f"{lo:.4f}–{hi:.4f}"]
        else:
            cells = [f"{100 * m['score']:.1f}%", f"{100 * lo:.1f}–{100 * hi:.1f}%"]
        rate = "-" if m["tokens_per_second"] is None else f"{m['tokens_per_second']:,.0f}"
        table.add_row(m["name"], *cells, str(m["items_scored"]), rate)
    return table


def demo_view(doc: dict, out: Path, color: bool) -> list:
    """`demo`: the comparison table, CAT's gain against the single skills', α, the commands."""
    import json

    from rich import box

    n = doc["budget"]["eval"]
    table = Table(title=f"accuracy on {n} eval items per task", title_justify="left", box=box.SIMPLE_HEAD,
                  caption="math-code: the held-out composite, programs run; kept: the share of the skill LoRA's "
                  "own accuracy a model keeps", caption_justify="left")
    for col in ("model", "math-code", "math", "code", "kept math", "kept code"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for r in doc["rows"]:
        table.add_row(r["model"], pct(r["math-code"]), pct(r["math"]), pct(r["code"]),
                      pct(r["retention"]["math"]), pct(r["retention"]["code"]))
    gains = doc["single_gains"]
    line = (f"CAT's gain on math-code over the base: {100 * doc['cat_gain']:+.1f} points; the math LoRA's "
            f"{100 * gains['math']:+.1f}, the code LoRA's {100 * gains['code']:+.1f}: "
            f"{'super-linear' if doc['super_linear'] else 'not super-linear'} (more than the single skills' "
            f"gains together). Best on math-code: {doc['best_composite']}.")
    cat = json.loads((Path(out) / "cat" / "cat_weights.json").read_text())
    alpha = cat_view(cat, str(Path(out) / "cat"), color)[-1]
    steps = "\n".join(doc["commands"])
    return [table, line, "", alpha, "", f"The same with the commands ({doc['total_seconds']:.0f} s here):", steps]
