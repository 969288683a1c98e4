"""train-skill, fit-cat and eval under `torchrun --nproc_per_node 2` (two CPU processes, gloo)
against the same command in one process: one output, written once, with the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

QUICK = ["--limit", "48", "--batch-size", "8", "--rank", "4", "--threads", "1", "--val-fraction", "0.2"]


def _loramix(args: list[str], processes: int, cwd: Path) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = (launcher + ["-m", "loramix"] if processes > 1 else [sys.executable, "-m", "loramix"]) + args
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", COLUMNS="1000")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _ok(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)  # one JSON document: only the first process prints


def _max_gap(a: Path, b: Path, name: str) -> tuple[float, float]:
    x, y = load_file(str(a / name)), load_file(str(b / name))
    assert x.keys() == y.keys()
    gap = max((x[k].float() - y[k].float()).abs().max().item() for k in x)
    return gap, max(x[k].float().abs().max().item() for k in x)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each command once in one process and once in two."""
    root = tmp_path_factory.mktemp("dp")
    out: dict[str, dict] = {}
    for n in (1, 2):
        out[f"train{n}"] = _ok(
            _loramix(["train-skill", "builtin:math", "-o", f"math{n}", "--max-steps", "4", "--json", *QUICK], n, root)
        )
    fsdp = ["train-skill", "builtin:math", "-o", "math-fsdp", "--max-steps", "4", "--fsdp", "--json", *QUICK]
    out["fsdp"] = _ok(_loramix(fsdp, 2, root))
    _ok(_loramix(["train-skill", "builtin:code", "-o", "code", "--max-steps", "3", "--json", *QUICK], 1, root))
    for n in (1, 2):
        fit = ["fit-cat", "math1", "code", "-d", "builtin:math", "-d", "builtin:code", "-o", f"soup{n}"]
        out[f"fit{n}"] = _ok(_loramix([*fit, "--steps", "3", "--threads", "1", "--json"], n, root))
        if n == 2:
            fit[-1] = "soup-fsdp"
            out["fit-fsdp"] = _ok(_loramix([*fit, "--steps", "3", "--threads", "1", "--fsdp", "--json"], n, root))
        scored = ["eval", "-d", "builtin:math", "--adapter", "soup1", "--adapter", "math1", "--limit", "12"]
        scored += ["--batch-size", "4", "--max-new-tokens", "12", "--threads", "1", "--json"]
        out[f"eval{n}"] = _ok(_loramix([*scored, "--predictions", f"pred{n}.jsonl"], n, root))
        loss = ["eval", "-d", "builtin:code", "--adapter", "code", "--metric", "loss", "--limit", "10"]
        out[f"loss{n}"] = _ok(_loramix([*loss, "--batch-size", "3", "--threads", "1", "--json"], n, root))
    return root, out


def test_train_skill_in_two_processes_learns_what_one_does(runs):
    root, out = runs
    one, two = out["train1"], out["train2"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["steps"] == one["steps"] == 4 and two["tokens"] == one["tokens"]
    # each process took half of every batch; the summed gradient is the whole batch's
    assert two["loss_curve"] == pytest.approx(one["loss_curve"], rel=1e-4)
    assert two["val_loss"][-1]["loss"] == pytest.approx(one["val_loss"][-1]["loss"], rel=1e-4)
    gap, size = _max_gap(root / "math1", root / "math2", "adapter_model.safetensors")
    assert gap < 1e-3 * size
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []  # nothing half-written


def test_train_skill_with_the_layers_sharded_learns_what_one_process_does(runs):
    root, out = runs
    one, sharded = out["train1"], out["fsdp"]
    assert (sharded["processes"], sharded["fsdp"], one["fsdp"]) == (2, True, False)
    assert sharded["loss_curve"] == pytest.approx(one["loss_curve"], rel=1e-4)
    gap, size = _max_gap(root / "math1", root / "math-fsdp", "adapter_model.safetensors")
    assert gap < 1e-3 * size  # the whole LoRA was gathered and written, in PEFT's names


def test_fsdp_needs_several_processes(tmp_path):
    result = _loramix(["train-skill", "builtin:math", "-o", "m", "--fsdp", *QUICK], 1, tmp_path)
    assert result.returncode == 2 and "--fsdp shards the base across the processes" in result.stderr


def test_fit_cat_in_two_processes_learns_the_same_alpha(runs):
    root, out = runs
    one, two, sharded = ([v for row in out[k]["alpha"] for v in row] for k in ("fit1", "fit2", "fit-fsdp"))
    assert two == pytest.approx(one, rel=1e-4, abs=1e-6)
    assert sharded == pytest.approx(one, rel=1e-4, abs=1e-6)  # the base's layers sharded (--fsdp)
    a = load_file(str(root / "soup1" / "cat_weights.safetensors"))["alpha"]
    b = load_file(str(root / "soup2" / "cat_weights.safetensors"))["alpha"]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_eval_in_two_processes_scores_every_item_as_one_does(runs):
    root, out = runs
    for metric in ("eval", "loss"):
        one, two = out[f"{metric}1"], out[f"{metric}2"]
        assert [m["name"] for m in two["models"]] == [m["name"] for m in one["models"]]
        for a, b in zip(one["models"], two["models"]):
            assert (b["score"], b["ci"], b["items_scored"], b["tokens"]) == (
                a["score"],
                a["ci"],
                a["items_scored"],
                a["tokens"],
            )
    # the same batches, dealt out: the same greedy text for every item, written once, in order
    assert (root / "pred2.jsonl").read_text() == (root / "pred1.jsonl").read_text()


def test_a_command_that_runs_in_one_process_refuses_the_launcher(tmp_path, base_dir, adapter_pair):
    a, b = adapter_pair
    result = _loramix(["merge", str(a), str(b), "-o", "merged"], 2, tmp_path)
    assert result.returncode != 0
    assert "merge runs in one process, not under torchrun" in result.stderr
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["replicated", "fsdp"])
def test_ctrl_c_on_one_process_checkpoints_and_a_resume_in_two_gives_the_same_run(runs, tmp_path, sharding):
    """Ctrl-C reaching the first process stops both after the same step; one checkpoint is
    written (whole, when FSDP shards the weights), and resuming under the launcher ends where an
    uninterrupted run does."""
    import psutil

    whole = runs[1]["train2"]  # the same run, uninterrupted
    train = ["train-skill", "builtin:math", "--max-steps", "4", "--json", *QUICK, *sharding]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.Popen(
        [*launcher, "-m", "loramix", *train, "-o", "cut"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    assert run.stderr is not None
    for line in run.stderr:
        if "step 1/4" in line:
            for child in psutil.Process(run.pid).children(recursive=True):
                if child.environ().get("RANK") == "0":
                    os.kill(child.pid, signal.SIGINT)
    assert run.wait(timeout=300) != 0
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut-checkpoint" / "state.json").is_file()
    resumed = _ok(_loramix([*train, "-o", "cut", "--resume"], 2, tmp_path))
    assert resumed["resumed_at_step"] and 1 <= resumed["resumed_at_step"][0] < 4
    assert resumed["loss_curve"] == pytest.approx(whole["loss_curve"], rel=1e-4)
    assert not (tmp_path / "cut-checkpoint").exists()


def test_accelerate_launch_runs_the_same_data_parallel_job(runs, tmp_path):
    """`accelerate launch --multi_gpu` starts torchrun's processes (on CPUs too): the same run."""
    pytest.importorskip("accelerate")
    _, out = runs
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "loramix"]
    train = ["train-skill", "builtin:math", "-o", "math", "--max-steps", "4", "--json", *QUICK]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    log = _ok(subprocess.run(launch + train, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900))
    assert log["processes"] == 2
    assert log["loss_curve"] == pytest.approx(out["train2"]["loss_curve"], rel=1e-4)
