"""examples/skill-soup.sh runs end to end with small budgets (set -euo pipefail: any failing step fails it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "skill-soup.sh"


def test_skill_soup_script(tmp_path):
    env = dict(os.environ, ROWS="200", EVAL="20", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "soup")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = [line.split() for line in proc.stdout.splitlines() if line.endswith("% on math-code")]
    assert [s[0] for s in scores] == ["base", "math", "code", "cat", "linear", "ties"]
    assert "α per layer" in proc.stdout and "each skill LoRA took 12 steps" in proc.stderr
    for name in ("math", "code", "cat", "linear", "ties"):
        assert (tmp_path / "soup" / name / "adapter_model.safetensors").is_file(), name
