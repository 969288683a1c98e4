"""Progress on stderr: Rich bars on a terminal, plain log lines (or nothing) otherwise."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from loramix.cli.render import console
from loramix.cli.render.cells import fmt_seconds
from loramix.core import dist


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

    out = console.stderr()
    if not out.is_terminal or not dist.is_main():  # of several processes, the first reports
        yield lambda n: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def training_progress(description: str, total: int) -> Iterator:
    """Per-step progress on stderr: a Rich bar (step, loss, tokens/s, ETA) on a terminal, else a
    plain log line every ~5% of the steps and at every validation. Yields report(step, fields)."""
    import time

    out = console.stderr()
    if not dist.is_main():
        yield lambda step, fields: None
        return
    if not out.is_terminal:
        every, began, first = max(1, total // 20), time.time(), [0]  # first: the step a resumed run starts at

        def log(step: int, fields: dict | None) -> None:
            if fields is None:
                first[0] = step
                return
            if step % every and step != total and fields.get("val_loss") is None:
                return
            rate = (step - first[0]) / max(1e-9, time.time() - began)
            out.print(
                f"{description}: step {step}/{total} {_step_fields(fields)} "
                f"eta {fmt_seconds((total - step) / rate if rate else 0)}",
                highlight=False,
                markup=False,
            )

        yield log
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=out,
        transient=False,
    )
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
