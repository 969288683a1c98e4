"""Outputs never destroy inputs, replace atomically, lose no race, and clean up after a killed run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.core import outputs
from loramix.core.errors import InputError

runner = CliRunner(env={"COLUMNS": "1000"})
TRAIN = ["--limit", "32", "--batch-size", "8", "--max-steps", "1", "--rank", "2", "--threads", "1"]


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- outputs that would destroy inputs ------------------------------------------------------------


@pytest.fixture
def bundled_copy(tmp_path, monkeypatch):
    """The bundled model, copied: `loramix-tiny` names the copy for the length of a test."""
    from loramix.core import models

    copy = shutil.copytree(models.bundled_path(), tmp_path / "zoo" / "loramix-tiny")
    monkeypatch.setattr(models, "bundled_path", lambda: copy)
    return copy


def test_into_base_by_name_cannot_overwrite_that_base(bundled_copy, tmp_path):
    from tests.helpers import make_adapter

    a = make_adapter(bundled_copy, tmp_path / "a", r=2, targets=["q_proj"])
    before = files(bundled_copy)
    result = runner.invoke(
        app, ["merge", str(a), "-m", "linear", "--into-base", "loramix-tiny", "-o", str(bundled_copy), "--force"]
    )
    assert result.exit_code == 2 and "is also an input" in result.stderr
    assert files(bundled_copy) == before


@pytest.mark.parametrize("where", ["base", "inside base", "data folder"])
def test_train_skill_refuses_an_out_on_its_inputs(bundled_copy, tmp_path, where):
    data = tmp_path / "d" / "rows.jsonl"
    data.parent.mkdir()
    data.write_text('{"prompt": "1 + 1 =", "completion": " 2"}\n' * 8)
    out = {"base": bundled_copy, "inside base": bundled_copy / "sub", "data folder": data.parent}[where]
    kept = files(bundled_copy), files(data.parent)
    result = runner.invoke(app, ["train-skill", str(data), "-o", str(out), "--force", *TRAIN])
    assert result.exit_code == 2, result.stderr
    assert "is also an input" in result.stderr or "holds the input" in result.stderr or "lies inside" in result.stderr
    assert (files(bundled_copy), files(data.parent)) == kept


def test_eval_predictions_cannot_overwrite_the_data(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "Task: 1 + 1\\nCode:", "completion": " print(1 + 1)"}\n')
    before = data.read_bytes()
    result = runner.invoke(app, ["eval", "-d", str(data), "--predictions", str(data), "--force", "--threads", "1"])
    assert result.exit_code == 2 and "is also an input" in result.stderr
    assert data.read_bytes() == before


def test_a_symlink_to_an_input_is_that_input(tmp_path, adapter_pair):
    link = tmp_path / "link"
    link.symlink_to(adapter_pair[0])
    with pytest.raises(InputError, match="is also an input"):
        outputs.check_out(link, True, [adapter_pair[0]])


# --- atomic replacement, races, leftovers ----------------------------------------------------------


def _write(out: Path, text: str, force: bool = False) -> None:
    with outputs.atomic_dir(out, force) as tmp:
        (tmp / "f").write_text(text)


def test_force_replaces_in_one_exchange_and_leaves_nothing(tmp_path):
    _write(tmp_path / "o", "old")
    _write(tmp_path / "o", "new", force=True)
    assert (tmp_path / "o" / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_without_renameat2_a_kill_between_renames_is_recovered(tmp_path, monkeypatch):
    """The fallback moves the old output aside first: a run killed then leaves no --out, only
    .o.old-PID-*; the next run (or resume) puts it back."""
    monkeypatch.setattr(outputs, "_libc", lambda: None)
    _write(tmp_path / "o", "old")
    pid = dead_pid()
    (tmp_path / "o").rename(tmp_path / f".o.old-{pid}-abcd1234")  # what the killed run left
    assert not (tmp_path / "o").exists()
    outputs.recover(tmp_path / "o")
    assert (tmp_path / "o" / "f").read_text() == "old"
    _write(tmp_path / "o", "new", force=True)  # and the fallback replacement itself works
    assert (tmp_path / "o" / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_a_run_that_finds_out_taken_at_the_end_fails_and_keeps_the_other(tmp_path):
    """Two runs to one --out without --force: the one that finishes second fails."""
    with (
        pytest.raises(InputError, match="appeared while this run was writing"),
        outputs.atomic_dir(tmp_path / "o") as tmp,
    ):
        (tmp / "f").write_text("second")
        _write(tmp_path / "o", "first")  # the other run finishes meanwhile
    assert (tmp_path / "o" / "f").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_concurrent_merges_to_one_out_one_fails(adapter_pair, tmp_path, monkeypatch):
    import loramix.merge.job

    real = loramix.merge.job.write_adapter

    def racing(folder, config, factors, *rest):
        real(folder, config, factors, *rest)
        if not (tmp_path / "m").exists():  # another merge lands its output first
            shutil.copytree(folder, tmp_path / "m")
            (tmp_path / "m" / "other").write_text("the other run")

    monkeypatch.setattr(loramix.merge.job, "write_adapter", racing)
    result = runner.invoke(app, ["merge", *map(str, adapter_pair), "-m", "linear", "-o", str(tmp_path / "m")])
    assert result.exit_code == 2 and "appeared while this run was writing" in result.stderr
    assert (tmp_path / "m" / "other").read_text() == "the other run"


def test_leftovers_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / f".o.tmp-{dead_pid()}-aaaa1111"
    live = tmp_path / f".o.tmp-{__import__('os').getpid()}-bbbb2222"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "big").write_bytes(b"x" * 1000)
    _write(tmp_path / "o", "new")
    assert not dead.exists() and live.exists()


def test_resume_finds_a_checkpoint_a_killed_replacement_moved_aside(tmp_path, monkeypatch):
    """train-skill: Ctrl-C after step 3 saves a checkpoint; a later replacement killed between its
    two renames would leave it as .m-checkpoint.old-PID-*: --resume puts it back and finishes."""
    import os
    import signal

    from loramix.train import loop

    real, calls = loop.step_loss, []

    def step_loss(run, batches):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(run, batches)

    monkeypatch.setattr(loop, "step_loss", step_loss)
    args = [
        "train-skill",
        "builtin:math",
        "-o",
        str(tmp_path / "m"),
        "--limit",
        "64",
        "--batch-size",
        "8",
        "--max-steps",
        "5",
        "--rank",
        "2",
        "--threads",
        "1",
    ]
    assert runner.invoke(app, args).exit_code == 130
    monkeypatch.setattr(loop, "step_loss", real)
    ckpt = tmp_path / "m-checkpoint"
    ckpt.rename(tmp_path / f".m-checkpoint.old-{dead_pid()}-abcd1234")
    result = runner.invoke(app, [*args, "--resume", "--json"])
    assert result.exit_code == 0, result.stderr
    log = json.loads(result.stdout)
    assert log["steps"] == 5 and log["resumed_at_step"] == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
