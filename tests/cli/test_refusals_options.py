"""Refusals of merge options and of bad --into-base models: exit 2, a clear message, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from loramix.cli.app import app

runner = CliRunner()


def refused(tmp_path, *args, message: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [str(a) for a in args] + ["-o", str(out)], env={"NO_COLOR": "1", "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()), result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "args,message",
    [
        (["-m", "ties", "--majority-sign", "most"], "'most' is not one of 'total', 'frequency'"),
        (["-m", "linear", "--rank", "0"], "--rank must be at least 1"),
        (["-m", "linear", "--profile", "vllm"], "'vllm' is not one of 'peft', 'portable'"),
        (["-m", "linear", "--majority-sign", "total"], "linear takes no --majority-sign"),
        (["-m", "linear", "--into-base", "x", "--rank", "4"], "--rank and --profile do not apply"),
    ],
)
def test_bad_options(adapter_pair, tmp_path, args, message):
    refused(tmp_path, "merge", *adapter_pair, *args, message=message)


def test_inspect_density_out_of_range(adapter_pair):
    result = runner.invoke(app, ["inspect", *map(str, adapter_pair), "--density", "0"])
    assert result.exit_code == 2 and "--density must be in (0, 1]" in result.stderr


@pytest.fixture
def base_copy(base_dir, tmp_path):
    return shutil.copytree(base_dir, tmp_path / "basecopy")


def test_into_base_quantized(adapter_pair, base_copy, tmp_path):
    cfg = json.loads((base_copy / "config.json").read_text())
    cfg["quantization_config"] = {"load_in_4bit": True}
    (base_copy / "config.json").write_text(json.dumps(cfg))
    refused(tmp_path, "merge", *adapter_pair, "-m", "linear", "--into-base", base_copy, message="is quantized")


def test_into_base_pickles_only(adapter_pair, base_copy, tmp_path):
    (base_copy / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, base_copy / "pytorch_model.bin")
    refused(
        tmp_path, "merge", *adapter_pair, "-m", "linear", "--into-base", base_copy, message="holds pickled weights only"
    )


def test_into_base_not_a_model(adapter_pair, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(
        tmp_path,
        "merge",
        *adapter_pair,
        "-m",
        "linear",
        "--into-base",
        tmp_path / "empty",
        message="not a model folder",
    )


def test_into_base_corrupt_weights(adapter_pair, base_copy, tmp_path):
    (base_copy / "model.safetensors").write_bytes(b"\x00" * 64)
    refused(tmp_path, "merge", *adapter_pair, "-m", "linear", "--into-base", base_copy, message="truncated or corrupt")


def test_into_base_of_another_shape(adapter_pair, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(other)
    refused(tmp_path, "merge", *adapter_pair, "-m", "linear", "--into-base", other, message="the base weight has shape")


def test_into_base_missing_module(adapter_pair, tmp_path):
    from tests.helpers import tiny_llama

    small = tiny_llama(tmp_path / "one_layer", layers=1)
    refused(tmp_path, "merge", *adapter_pair, "-m", "linear", "--into-base", small, message="is not in the base model")


def test_into_base_cannot_overwrite_its_base(adapter_pair, base_copy, tmp_path):
    result = runner.invoke(
        app,
        [
            "merge",
            *map(str, adapter_pair),
            "-m",
            "linear",
            "--into-base",
            str(base_copy),
            "-o",
            str(base_copy),
            "--force",
        ],
    )
    assert result.exit_code == 2 and "input" in result.stderr
    assert (base_copy / "model.safetensors").is_file()
