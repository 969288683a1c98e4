"""`loramix train-skill` end to end on the bundled loramix-tiny: output, logs, resume, 4-bit."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.train import loop

runner = CliRunner(env={"COLUMNS": "1000"})  # one message per line, unwrapped
QUICK = ["--limit", "48", "--batch-size", "8", "--rank", "4", "--threads", "1", "--val-fraction", "0.2"]


def _train(out, *extra):
    return runner.invoke(app, ["train-skill", "builtin:math", "-o", str(out), *QUICK, *extra])


def test_writes_an_adapter_and_a_train_log_with_plain_progress(tmp_path):
    result = _train(tmp_path / "m", "--max-steps", "3", "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "train_log.json",
    ]
    log = json.loads((tmp_path / "m" / "train_log.json").read_text())
    assert json.loads(result.stdout) == log
    assert log["steps"] == 3 and len(log["loss_curve"]) == 3 and log["tokens"] > 0
    assert log["base"] == "loramix-tiny" and log["data"] == "builtin:math" and len(log["data_sha256"]) == 64
    assert log["train_rows"] + log["val_rows"] == 48 and log["val_rows"] == 10
    assert log["options"]["rank"] == 4 and log["options"]["lr"] == 1e-3
    assert len(log["val_loss"]) == 1 and log["val_loss"][0]["step"] == 3
    # stderr is not a terminal here: plain log lines instead of a bar
    assert "train-skill: step 3/3 loss" in result.stderr and "tok/s" in result.stderr
    config = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 64 and config["base_model_name_or_path"] == "loramix-tiny"
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def test_table_output_and_chosen_targets(tmp_path):
    result = _train(tmp_path / "m", "--max-steps", "2", "--targets", "q_proj,self_attn.v_proj")
    assert result.exit_code == 0, result.stderr
    assert "validation loss" in result.stdout and "builtin:math (38 train, 10 val rows)" in result.stdout
    keys = load_file(str(tmp_path / "m" / "adapter_model.safetensors"))
    assert keys and all(".q_proj." in k or ".v_proj." in k for k in keys)


def _interrupt_after(monkeypatch, n):
    """Send ourselves SIGINT (Ctrl-C) during the n-th optimizer step."""
    real, calls = loop.step_loss, []

    def step_loss(run, batches):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return real(run, batches)

    monkeypatch.setattr(loop, "step_loss", step_loss)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_gives_the_uninterrupted_adapter(tmp_path, monkeypatch):
    full = _train(tmp_path / "full", "--max-steps", "6")
    assert full.exit_code == 0, full.stderr
    _interrupt_after(monkeypatch, 3)
    cut = _train(tmp_path / "cut", "--max-steps", "6")
    assert cut.exit_code == 130, cut.stderr
    assert "interrupted after step 3 of 6" in cut.stderr and "--resume" in cut.stderr
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut-checkpoint" / "state.json").is_file()
    monkeypatch.undo()
    resumed = _train(tmp_path / "cut", "--max-steps", "6", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    a = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = json.loads((tmp_path / "full" / "train_log.json").read_text())
    log_b = json.loads((tmp_path / "cut" / "train_log.json").read_text())
    assert log_b["loss_curve"] == log_a["loss_curve"] and log_b["resumed_at_step"] == [3]
    assert not (tmp_path / "cut-checkpoint").exists()


def test_resume_with_different_settings_is_refused(tmp_path, monkeypatch):
    _interrupt_after(monkeypatch, 2)
    assert _train(tmp_path / "m", "--max-steps", "4").exit_code == 130
    monkeypatch.undo()
    result = _train(tmp_path / "m", "--max-steps", "4", "--resume", "--lr", "0.01")
    assert result.exit_code == 2
    assert "different settings (lr: checkpoint 0.001, now 0.01)" in result.stderr
    again = _train(tmp_path / "m", "--max-steps", "4")
    assert again.exit_code == 2 and "a checkpoint of an interrupted run exists" in again.stderr
    assert not (tmp_path / "m").exists()


def test_save_every_writes_checkpoints_that_survive_a_hard_abort(tmp_path, monkeypatch):
    real, calls = loop.step_loss, []

    def step_loss(run, batches):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # a second Ctrl-C: abort without a checkpoint of its own
        return real(run, batches)

    monkeypatch.setattr(loop, "step_loss", step_loss)
    result = _train(tmp_path / "m", "--max-steps", "6", "--save-every", "2")
    assert result.exit_code == 130
    state = json.loads((tmp_path / "m-checkpoint" / "state.json").read_text())
    assert len(state["history"]["loss"]) == 2


@pytest.mark.slow
def test_four_bit_base_trains_on_the_cpu_across_a_validation_pass(tmp_path):
    # two epochs: the validation forward after epoch 1 must not break the backward of epoch 2
    result = _train(tmp_path / "q", "--load-in-4bit", "--epochs", "2", "--lr", "3e-3", "--json")
    assert result.exit_code == 0, result.stderr
    log = json.loads(result.stdout)
    assert log["options"]["load_in_4bit"] and log["steps"] == 10 and len(log["val_loss"]) == 2
    assert log["val_loss"][1]["loss"] < log["val_loss"][0]["loss"]
    weights = load_file(str(tmp_path / "q" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in weights.items())
