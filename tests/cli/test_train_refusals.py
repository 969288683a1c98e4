"""Every input `train-skill` refuses: exit code, one clear message, nothing written."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.core import models
from loramix.train import loop

runner = CliRunner(env={"COLUMNS": "1000"})  # one message per line, unwrapped
QUICK = ["--limit", "16", "--batch-size", "8", "--rank", "4", "--threads", "1", "--max-steps", "1"]


def _run(tmp_path, data="builtin:math", *extra):
    return runner.invoke(app, ["train-skill", data, "-o", str(tmp_path / "out"), *QUICK, *extra])


def _nothing_written(tmp_path):
    return not [p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]


def _write(tmp_path, text):
    path = tmp_path / "rows.jsonl"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "rows.jsonl: no rows"),
        ("\n\n", "rows.jsonl: no rows"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n', "rows.jsonl:2: not JSON"),
        ('{"prompt": "a"}\n', 'rows.jsonl:1: has "prompt" but no "completion"'),
        ('{"question": "a"}\n', "rows.jsonl:1: needs exactly one of"),
        ("[1, 2]\n", "rows.jsonl:1: a row must be a JSON object"),
    ],
)
def test_bad_jsonl_names_the_file_and_line(tmp_path, text, message):
    result = _run(tmp_path, _write(tmp_path, text))
    assert result.exit_code == 2
    assert message in result.stderr and result.stdout == ""
    assert _nothing_written(tmp_path)


def test_missing_data_file(tmp_path):
    result = _run(tmp_path, str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2 and "nope.jsonl: no such file" in result.stderr


def test_unknown_target_lists_the_modules_that_exist(tmp_path):
    result = _run(tmp_path, "builtin:math", "--targets", "q_proj,qkv")
    assert result.exit_code == 2
    assert "--targets qkv: no such module" in result.stderr
    assert "down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj" in result.stderr
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize(
    "targets, message",
    [
        ("", "--targets names no module"),
        ("lm_head", "--targets lm_head: embeddings and the output head are not LoRA targets"),
        ("self_attn.qkv", "--targets self_attn.qkv: no such module"),
    ],
)
def test_targets_that_cannot_be_trained(tmp_path, targets, message):
    result = _run(tmp_path, "builtin:math", "--targets", targets)
    assert result.exit_code == 2 and message in result.stderr
    assert _nothing_written(tmp_path)


def test_rank_larger_than_a_module(tmp_path):
    result = _run(tmp_path, "builtin:math", "--rank", "4096")
    assert result.exit_code == 2 and "--rank 4096: larger than" in result.stderr
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--val-fraction", "1.5", "--val-fraction 1.5: must be in [0, 1)"),
        ("--batch-size", "0", "--batch-size 0: must be at least 1"),
        ("--lr", "-1", "--lr -1.0: must be a positive number"),
        ("--dtype", "int8", "'int8' is not one of 'auto', 'float32', 'bfloat16', 'float16'"),
        ("--device", "cuda:7", "no CUDA device"),
        ("--device", "gpu", "'gpu' is not auto, cpu, cuda or cuda:N"),
        ("--device", "mps", "'mps' is not auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_option_values(tmp_path, option, value, message):
    if value == "cuda:7" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _run(tmp_path, "builtin:math", option, value)
    assert result.exit_code == 2 and message in result.stderr
    assert _nothing_written(tmp_path)


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    result = _run(tmp_path)
    assert result.exit_code == 2 and "already exists" in result.stderr and "--force" in result.stderr
    assert (tmp_path / "out" / "keep").read_text() == "x"


def test_resume_without_a_checkpoint(tmp_path):
    result = _run(tmp_path, "builtin:math", "--resume")
    assert result.exit_code == 2 and "out-checkpoint: no checkpoint to resume from" in result.stderr


def test_four_bit_without_a_working_bitsandbytes_says_why(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # any import of it now fails
    result = _run(tmp_path, "builtin:math", "--load-in-4bit")
    assert result.exit_code == 2
    assert "--load-in-4bit: bitsandbytes cannot be loaded here (ModuleNotFoundError" in result.stderr
    assert _nothing_written(tmp_path)


def test_out_of_memory_suggests_smaller_batches(tmp_path, monkeypatch):
    def step_loss(run, batches):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(loop, "step_loss", step_loss)
    result = _run(tmp_path)
    assert result.exit_code == 1
    assert "out of memory while training" in result.stderr and "--batch-size" in result.stderr
    assert "--load-in-4bit" in result.stderr and "--max-length" in result.stderr
    assert _nothing_written(tmp_path)


def _custom_base(tmp_path, model_type):
    base = tmp_path / "custom"
    shutil.copytree(models.bundled_path(), base)
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Model"}
    config["model_type"] = model_type
    (base / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (base / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    return base, marker


def test_a_model_with_its_own_code_needs_trust_remote_code(tmp_path):
    base, marker = _custom_base(tmp_path, "loramix-custom")
    result = _run(tmp_path, "builtin:math", "--base", str(base))
    assert result.exit_code == 2 and "--trust-remote-code" in result.stderr
    assert "custom: this model needs its own code to load" in result.stderr
    assert not marker.exists()
    assert _nothing_written(tmp_path)


def test_a_known_architecture_loads_without_running_the_folders_code(tmp_path):
    base, marker = _custom_base(tmp_path, "llama")
    result = _run(tmp_path, "builtin:math", "--base", str(base))
    assert result.exit_code == 0, result.stderr
    assert not marker.exists()


def test_a_base_with_only_pickled_weights_is_refused_unread(tmp_path, monkeypatch):
    import pickle

    import torch

    base = tmp_path / "pickled"
    shutil.copytree(models.bundled_path(), base)
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(b"not really a pickle")

    def refuse(*a, **k):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    result = _run(tmp_path, "builtin:math", "--base", str(base))
    assert result.exit_code == 2
    assert "pickled: has no safetensors weights" in result.stderr
    assert _nothing_written(tmp_path)


def test_more_builtin_rows_than_exist(tmp_path):
    result = runner.invoke(app, ["data", "builtin:units:eval", "--limit", "100000"])
    assert result.exit_code == 2 and "builtin:units:eval has fewer than 100000 distinct rows" in result.stderr


def test_rows_beyond_max_length_are_counted_in_a_warning(tmp_path):
    rows = _write(
        tmp_path,
        '{"prompt": "a", "completion": " b"}\n' * 10 + ('{"prompt": "%s", "completion": " b"}\n' % ("x " * 300)) * 3,
    )
    result = runner.invoke(
        app,
        [
            "train-skill",
            rows,
            "-o",
            str(tmp_path / "out"),
            "--rank",
            "4",
            "--threads",
            "1",
            "--max-steps",
            "1",
            "--max-length",
            "64",
            "--val-fraction",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "3 of 13 rows have no completion token within --max-length 64" in result.stderr
    assert json.loads(result.stdout)["rows_too_long"] == 3


def test_training_on_the_held_out_composite_warns(tmp_path):
    result = _run(tmp_path, "builtin:math-code")
    assert result.exit_code == 0, result.stderr
    assert "builtin:math-code is held out for evaluation" in result.stderr
