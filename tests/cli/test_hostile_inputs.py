"""Hostile and broken inputs, one row each: the command, the exit code, a piece of the one message
on stderr, and nothing written. Every row here failed on an earlier version with exit 0 and a wrong
result, or exit 1 "unexpected ..." where exit 2 naming the file is due."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from loramix.cli.app import app
from tests.helpers import make_adapter

runner = CliRunner(env={"COLUMNS": "1000", "NO_COLOR": "1"})
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "9" * 5000


def _config(adapter: Path, **changes) -> Path:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter


def _weights(adapter: Path, dtype) -> Path:
    tensors = {k: v.to(dtype) for k, v in load_file(adapter / "adapter_model.safetensors").items()}
    save_file(tensors, adapter / "adapter_model.safetensors")
    return adapter


def _raw_config(adapter: Path, text: str) -> Path:
    (adapter / "adapter_config.json").write_text(text)
    return adapter


def _rows(tmp: Path, text: str) -> str:
    (tmp / "rows.jsonl").write_text(text, encoding="utf-8")
    return str(tmp / "rows.jsonl")


def _fifo(tmp: Path) -> str:
    os.mkfifo(tmp / "pipe.jsonl")
    return str(tmp / "pipe.jsonl")


def _loop(tmp: Path, name: str) -> Path:
    (tmp / name).symlink_to(tmp / name)
    return tmp / name


def _base_with(tmp: Path, base: Path, config_text: str | None = None, index: dict | None = None) -> Path:
    copy = shutil.copytree(base, tmp / "basecopy")
    if config_text is not None:
        (copy / "config.json").write_text(config_text)
    if index is not None:
        (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    return copy


def _table(tmp: Path) -> Path:
    folder = tmp / "table"
    folder.mkdir()
    (folder / "cat_weights.json").write_text('{"command": "fit-cat", "alpha": ' + DEEP + "}")
    return folder


# (kind, build(tmp, a, b, base) -> the command's arguments after the command name, exit code, message)
CASES = [
    (
        "config nested too deeply",
        lambda t, a, b, base: ["merge", _raw_config(a, DEEP), b, "-m", "linear"],
        2,
        "JSON nested too deeply",
    ),
    (
        "config integer of 5000 digits",
        lambda t, a, b, base: ["merge", _raw_config(a, '{"r": ' + HUGE_INT + "}"), b, "-m", "linear"],
        2,
        "not valid JSON",
    ),
    ("JSONL row nested too deeply", lambda t, a, b, base: ["data", _rows(t, DEEP + "\n")], 2, "nested too deeply"),
    (
        "JSONL integer of 5000 digits",
        lambda t, a, b, base: ["data", _rows(t, '{"text": "x", "n": ' + HUGE_INT + "}\n")],
        2,
        "rows.jsonl:1: not valid JSON",
    ),
    ("JSONL lone surrogate", lambda t, a, b, base: ["data", _rows(t, '{"text": "a\\ud800b"}\n')], 2, "lone surrogate"),
    (
        "few-shot file nested too deeply",
        lambda t, a, b, base: ["eval", "-d", "builtin:math", "--limit", "1", "--few-shot", _rows(t, DEEP + "\n")],
        2,
        "nested too deeply",
    ),
    ("α table nested too deeply", lambda t, a, b, base: ["merge", "--cat-weights", _table(t)], 2, "nested too deeply"),
    ("int8 LoRA weights", lambda t, a, b, base: ["merge", _weights(a, torch.int8), b, "-m", "linear"], 2, "is int8"),
    ("bool LoRA weights", lambda t, a, b, base: ["merge", _weights(a, torch.bool), b, "-m", "linear"], 2, "is bool"),
    (
        "complex LoRA weights",
        lambda t, a, b, base: ["merge", _weights(a, torch.complex64), b, "-m", "linear"],
        2,
        "is complex64",
    ),
    (
        "float8 weights, inspected",
        lambda t, a, b, base: ["inspect", _weights(a, torch.float8_e4m3fn)],
        2,
        "is float8_e4m3fn",
    ),
    (
        "a symbolic link loop as adapter",
        lambda t, a, b, base: ["merge", _loop(t, "loop"), b, "-m", "linear"],
        2,
        "is a symbolic link that loops",
    ),
    (
        "a symbolic link loop as --out",
        lambda t, a, b, base: ["merge", a, b, "-m", "linear", "-o", _loop(t, "loop")],
        2,
        "is a symbolic link that loops",
    ),
    (
        "a base config.json that is a list",
        lambda t, a, b, base: ["merge", a, b, "-m", "linear", "--into-base", _base_with(t, base, "[1]")],
        2,
        "expected a JSON object",
    ),
    (
        "a weight_map of numbers",
        lambda t, a, b, base: [
            "merge",
            a,
            b,
            "-m",
            "linear",
            "--into-base",
            _base_with(t, base, index={"weight_map": {"x": 3}}),
        ],
        2,
        "has no weight_map of tensor names",
    ),
    ("a FIFO as DATA", lambda t, a, b, base: ["data", _fifo(t)], 2, "is a named pipe (FIFO)"),
    ("a folder as DATA", lambda t, a, b, base: ["data", str(t)], 2, "is a folder, not a JSONL file"),
    ("a device as DATA", lambda t, a, b, base: ["data", "/dev/zero"], 2, "is a device"),
    (
        "lora_alpha 1e308",
        lambda t, a, b, base: ["merge", _config(a, lora_alpha=1e308), b, "-m", "linear"],
        2,
        "are not finite",
    ),
    ("--weights 1e39", lambda t, a, b, base: ["merge", a, b, "-m", "linear", "-w", "1e39,1"], 2, "are not finite"),
    (
        "target_modules covering part of the weights",
        lambda t, a, b, base: ["merge", _config(a, target_modules="q_proj"), b, "-m", "linear"],
        2,
        "leaves out",
    ),
    (
        "an --out nobody can write",
        lambda t, a, b, base: ["merge", a, b, "-m", "linear", "-o", "/proc/loramix-out"],
        2,
        "cannot be written",
    ),
]


@pytest.mark.parametrize("kind, build, code, message", CASES, ids=[c[0] for c in CASES])
def test_refused(kind, build, code, message, base_dir, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    a = make_adapter(base_dir, work / "a", r=2, seed=1)
    b = make_adapter(base_dir, work / "b", r=2, seed=2)
    args = [str(x) for x in build(work, a, b, base_dir)]
    if args[0] in ("merge",) and "-o" not in args:
        args += ["-o", str(tmp_path / "out")]
    before = sorted(p.name for p in work.iterdir())
    result = runner.invoke(app, args)
    assert result.exit_code == code, (kind, result.stderr)
    assert message in " ".join(result.stderr.split()), (kind, result.stderr)
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in work.iterdir()) == before  # nothing written beside the inputs


def test_the_same_target_modules_rule_holds_in_every_command(base_dir, tmp_path):
    """An adapter whose target_modules regex covers only some of its weights: merge refuses it, eval
    refuses it (PEFT would drop the rest), inspect shows it with the reason."""
    a = _config(make_adapter(base_dir, tmp_path / "a", r=2, seed=1), target_modules=".*q_proj")
    merged = runner.invoke(app, ["merge", str(a), "-m", "linear", "-o", str(tmp_path / "m")])
    scored = runner.invoke(app, ["eval", "-d", "builtin:math", "--limit", "1", "-a", str(a), "--threads", "1"])
    shown = runner.invoke(app, ["inspect", str(a), "--json"])
    assert merged.exit_code == scored.exit_code == 2
    assert "leaves out" in merged.stderr and "leaves out" in scored.stderr
    assert shown.exit_code == 0 and any("leaves out" in p for p in json.loads(shown.stdout)["problems"])
