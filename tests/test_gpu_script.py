"""bench/gpu.sh, checked where no GPU is: it refuses a machine without CUDA, and its steps (the
7B-shaped random base, 4-bit train-skill, fit-cat, eval, the speed benchmarks) run at toy sizes
on the CPU (--smoke)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_a_machine_without_cuda(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no CUDA device here" in result.stderr
    assert not (tmp_path / "summary.md").exists()


@pytest.mark.slow
def test_every_step_runs_at_toy_sizes_on_the_cpu(tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), "--smoke", str(tmp_path)], capture_output=True, text=True, timeout=1200
    )
    summary = (tmp_path / "summary.md").read_text()
    assert result.returncode == 0, summary + result.stderr[-2000:]
    rows = [line.split("|")[1:3] for line in summary.splitlines() if line.startswith("| ") and "step" not in line]
    steps = {name.strip(): code.strip() for name, code in rows}
    assert set(steps) == {
        "base7b",
        "train4bit_math",
        "train4bit_code",
        "fitcat4bit",
        "eval7b",
        "fit_cat_speed_7b",
        "eval_speed",
    }
    assert set(steps.values()) == {"0"}
    for name in ("train4bit_math", "fitcat4bit", "eval7b"):
        log = (tmp_path / f"{name}.log").read_text()
        doc = json.loads(log[log.index("{\n") :])  # the --json document after any log lines
        assert doc["command"] == {"train4bit_math": "train-skill", "fitcat4bit": "fit-cat", "eval7b": "eval"}[name]
        assert doc.get("load_in_4bit", doc.get("options", {}).get("load_in_4bit")) is True
    assert "| loramix eval |" in (tmp_path / "eval_speed.md").read_text()
    assert "fit-cat" in (tmp_path / "fit_cat_speed.md").read_text()
