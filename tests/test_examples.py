"""examples/skill-soup.sh runs end to end with small budgets (set -euo pipefail: any failing step fails it).
One torch thread per command, so a machine other jobs keep busy slows it down without stalling it;
the timeout is far above its normal minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the example script (about a minute)

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "skill-soup.sh"


def test_skill_soup_script(tmp_path):
    env = dict(
        os.environ,
        ROWS="120",
        EVAL="12",
        THREADS="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "soup")], capture_output=True, text=True, env=env, timeout=3600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = [line.split() for line in proc.stdout.splitlines() if line.endswith("% on math-code")]
    assert [s[0] for s in scores] == ["base", "math", "code", "cat", "linear", "ties"]
    steps = json.loads((tmp_path / "soup" / "math" / "train_log.json").read_text())["steps"]
    assert steps == 8  # 114 training rows (6 held out for validation) at 16 a step
    assert "α per layer" in proc.stdout and f"each skill LoRA took {steps} steps" in proc.stderr
    for name in ("math", "code", "cat", "linear", "ties"):
        assert (tmp_path / "soup" / name / "adapter_model.safetensors").is_file(), name
