"""Training progress on stderr: a Rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import io

from rich.console import Console

from loramix.cli.render import cells, console, progress

FIELDS = {"loss": 0.1234, "tokens_per_s": 2500.0, "val_loss": None}


def _console(monkeypatch, terminal: bool) -> io.StringIO:
    buffer = io.StringIO()
    fake = Console(file=buffer, force_terminal=terminal, width=120, color_system=None)
    monkeypatch.setattr(console, "stderr", lambda: fake)
    return buffer


def test_plain_lines_every_five_percent_and_at_validation(monkeypatch):
    buffer = _console(monkeypatch, terminal=False)
    with progress.training_progress("train-skill", 100) as report:
        report(0, None)
        for step in range(1, 101):
            report(step, dict(FIELDS, val_loss=0.5 if step == 33 else None))
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 21  # steps 5, 10, ..., 100 and the validation at step 33
    assert lines[0].startswith("train-skill: step 5/100 loss 0.1234 2,500 tok/s eta ")
    assert any(line.startswith("train-skill: step 33/100") and "val 0.5000" in line for line in lines)


def test_a_bar_with_loss_and_speed_on_a_terminal(monkeypatch):
    buffer = _console(monkeypatch, terminal=True)
    with progress.training_progress("train-skill", 10) as report:
        report(4, None)  # resumed at step 4
        report(5, FIELDS)
    out = buffer.getvalue()
    assert "5/10" in out and "loss 0.1234 2,500 tok/s" in out and "eta" in out


def test_seconds_are_readable():
    assert cells.fmt_seconds(42.4) == "42s" and cells.fmt_seconds(125) == "2m05s"
