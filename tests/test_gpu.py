"""The CUDA path: train-skill (bfloat16 and 4-bit), fit-cat and eval on a GPU, and two processes on
two GPUs (nccl), replicated and with --fsdp. Skipped without CUDA; bench/gpu.sh runs them on a GPU machine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

QUICK = ["--limit", "64", "--batch-size", "8", "--rank", "8", "--val-fraction", "0.2", "--device", "cuda"]


def _loramix(args: list[str], cwd: Path, processes: int = 1) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = (launcher + ["-m", "loramix"] if processes > 1 else [sys.executable, "-m", "loramix"]) + args
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _finite(folder: Path) -> bool:
    weights = load_file(str(folder / "adapter_model.safetensors"))
    return all(torch.isfinite(t.float()).all() for t in weights.values())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    logs = {}
    for name, extra in (("math", []), ("code", []), ("math4", ["--load-in-4bit"])):
        skill = "builtin:code" if name == "code" else "builtin:math"
        logs[name] = _loramix(["train-skill", skill, "-o", name, "--max-steps", "12", "--json", *QUICK, *extra], root)
    return root, logs


def test_train_skill_on_the_gpu_learns(trained):
    root, logs = trained
    for name in ("math", "math4"):
        log = logs[name]
        assert log["device"].startswith("cuda") and log["dtype"] == "bfloat16"
        assert log["loss_curve"][-1] < log["loss_curve"][0]
        assert _finite(root / name)


def test_fit_cat_and_eval_on_the_gpu(trained):
    root, _ = trained
    fit = _loramix(
        ["fit-cat", "math", "code", "-d", "builtin:math", "-d", "builtin:code", "-o", "soup", "--steps", "6"]
        + ["--device", "cuda", "--json"],
        root,
    )
    assert all(math.isfinite(v) for row in fit["alpha"] for v in row if v is not None)
    scored = ["eval", "-d", "builtin:math", "--adapter", "soup", "--adapter", "math", "--limit", "32"]
    gpu = _loramix([*scored, "--device", "cuda", "--dtype", "float32", "--json"], root)
    cpu = _loramix([*scored, "--device", "cpu", "--json"], root)
    for g, c in zip(gpu["models"], cpu["models"]):  # float32 greedy text: at most a near-tie apart
        assert abs(g["correct"] - c["correct"]) <= 2, (g, c)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_train_as_one(trained, tmp_path):
    args = ["train-skill", "builtin:math", "--max-steps", "6", "--dtype", "float32", "--json", *QUICK]
    one = _loramix([*args, "-o", "one"], tmp_path)
    two = _loramix([*args, "-o", "two"], tmp_path, processes=2)
    assert two["processes"] == 2 and two["device"] == "cuda:0"
    assert two["loss_curve"] == pytest.approx(one["loss_curve"], rel=1e-3)
    sharded = _loramix([*args, "-o", "sharded", "--fsdp"], tmp_path, processes=2)
    assert sharded["fsdp"] and sharded["loss_curve"] == pytest.approx(one["loss_curve"], rel=1e-3)
    assert _finite(tmp_path / "sharded")
