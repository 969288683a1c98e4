"""Every command on a tiny random model of each supported family (tests/architectures.py), and
what is special about some of them: Falcon's layers are not quantized by bitsandbytes, MoE
models have 1-output gates the default targets leave out and 3-D expert parameters."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loramix.cli.app import app
from tests.architectures import COMMANDS, FAMILIES, expected, probe, tiny_model

runner = CliRunner(env={"COLUMNS": "1000"})
TRAIN = [
    "--limit",
    "32",
    "--batch-size",
    "8",
    "--max-steps",
    "2",
    "--rank",
    "4",
    "--threads",
    "1",
    "--val-fraction",
    "0",
]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_command_runs(family, tmp_path):
    outcomes = probe(family, tmp_path)
    assert list(outcomes) == list(COMMANDS)
    wrong = {c: o for c, o in outcomes.items() if not expected(family, c, o)}
    assert wrong == {}


def test_falcon_is_not_quantized_and_says_so(tmp_path):
    base = tiny_model("falcon", tmp_path / "base")
    result = runner.invoke(
        app, ["train-skill", "builtin:math", "-o", str(tmp_path / "q"), "--base", str(base), *TRAIN, "--load-in-4bit"]
    )
    assert result.exit_code == 2 and "--load-in-4bit quantized none of its layers" in result.stderr
    assert "FalconLinear" in result.stderr and not (tmp_path / "q").exists()


def test_moe_gates_are_left_out_of_the_default_targets(tmp_path):
    from safetensors.torch import load_file

    base = tiny_model("qwen2_moe", tmp_path / "base")
    result = runner.invoke(app, ["train-skill", "builtin:math", "-o", str(tmp_path / "a"), "--base", str(base), *TRAIN])
    assert result.exit_code == 0, result.stderr
    assert "left out the expert routers and gates shared_expert_gate" in result.stderr
    assert "routed experts are 3-D parameters" in result.stderr
    keys = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert keys and not [k for k in keys if "shared_expert_gate" in k]
    assert (
        "shared_expert_gate" not in json.loads((tmp_path / "a" / "adapter_config.json").read_text())["target_modules"]
    )
    named = runner.invoke(
        app,
        [
            "train-skill",
            "builtin:math",
            "-o",
            str(tmp_path / "g"),
            "--base",
            str(base),
            *TRAIN,
            "--targets",
            "q_proj,shared_expert_gate",
        ],
    )
    assert named.exit_code == 2 and "larger than model.layers.0.mlp.shared_expert_gate (1x64)" in named.stderr
    assert "leave shared_expert_gate out of --targets" in named.stderr


def test_moe_experts_train_with_target_parameters_and_merge(tmp_path):
    """--target-parameters trains LoRAs on Mixtral's 3-D experts; the adapter reads expert by expert
    and merges (exactly, for linear)."""
    base = tiny_model("mixtral", tmp_path / "base")
    params = "mlp.experts.gate_up_proj,mlp.experts.down_proj"
    for name, seed in (("a", "0"), ("b", "1")):
        result = runner.invoke(
            app,
            [
                "train-skill",
                "builtin:math",
                "-o",
                str(tmp_path / name),
                "--base",
                str(base),
                *TRAIN,
                "--target-parameters",
                params,
                "--seed",
                seed,
                "--lr",
                "0.01",
            ],
        )
        assert result.exit_code == 0, result.stderr
        assert "routed experts are 3-D parameters" not in result.stderr
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert log["options"]["target_parameters"] == params.split(",")
    merged = runner.invoke(
        app, ["merge", str(tmp_path / "a"), str(tmp_path / "b"), "-m", "linear", "-o", str(tmp_path / "m"), "--json"]
    )
    assert merged.exit_code == 0, merged.stderr
    report = json.loads(merged.stdout)
    assert report["exact"] and any(".experts.3.gate_up_proj" in n for n in report["errors"])
    wrong = runner.invoke(
        app,
        [
            "train-skill",
            "builtin:math",
            "-o",
            str(tmp_path / "x"),
            "--base",
            str(base),
            *TRAIN,
            "--target-parameters",
            "mlp.experts.up_proj",
        ],
    )
    assert wrong.exit_code == 2 and "no such 3-D parameter" in wrong.stderr and "gate_up_proj" in wrong.stderr
