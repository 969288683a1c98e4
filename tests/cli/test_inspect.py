"""`loramix inspect` through the CLI: summaries, heatmaps, comparisons, JSON and SVG."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.core.adapters import read_adapter
from tests.helpers import make_adapter, tiny_llama

runner = CliRunner()


def invoke(*args, **env):
    return runner.invoke(app, [str(a) for a in args], env={"NO_COLOR": "1", "COLUMNS": "80", **env})


def test_summary_and_heatmap(adapter_pair):
    a, _ = adapter_pair
    result = invoke("inspect", a)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("rank", "4", "alpha", "8", "q_proj", "down_proj", "14 in 2 layers", "‖ΔW‖_F"):
        assert text in out
    assert any(ch in out for ch in "░▒▓█")  # no colour: shades carry the picture
    assert "\x1b[" not in out


def test_json_norms_are_the_true_delta_norms(adapter_pair):
    a, _ = adapter_pair
    result = invoke("inspect", a, "--json")
    doc = json.loads(result.stdout)
    adapter = read_adapter(a)
    assert doc["rank"] == {"min": 4, "max": 4} and doc["modules"] == 14 and doc["layers"] == 2
    for name, stats in doc["module_stats"].items():
        assert stats["delta_norm"] == pytest.approx(float(torch.linalg.norm(adapter.modules[name].delta())), rel=1e-5)
    grid = doc["delta_norm"]
    assert grid["rows"] == ["0", "1"] and grid["cols"][:2] == ["q_proj", "k_proj"]
    q0 = doc["module_stats"]["model.layers.0.self_attn.q_proj"]["delta_norm"]
    assert grid["values"][0][0] == pytest.approx(q0)


def test_compare_twins_and_opposites(adapter_pair, tmp_path):
    a, _ = adapter_pair
    neg = tmp_path / "neg"
    assert invoke("merge", a, "-m", "linear", "--weights", "-1", "-o", neg).exit_code == 0
    same = json.loads(invoke("inspect", a, a, "--json", "--density", "1").stdout)
    assert same["overall"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert same["overall"]["conflict_rate"] == 0.0
    opposite = json.loads(invoke("inspect", a, neg, "--json", "--density", "1").stdout)
    assert opposite["overall"]["cosine"] == pytest.approx(-1.0, abs=1e-5)
    assert opposite["overall"]["conflict_rate"] == pytest.approx(1.0)
    assert [row["layer"] for row in opposite["layers"]] == ["0", "1"]


def test_compare_two_random_adapters(adapter_pair):
    result = invoke("inspect", *adapter_pair, "--density", "1")
    assert result.exit_code == 0, result.output
    assert "cosine" in result.stdout and "sign conflicts" in result.stdout
    doc = json.loads(invoke("inspect", *adapter_pair, "--json", "--density", "1").stdout)
    assert 0.35 < doc["overall"]["conflict_rate"] < 0.65  # independent random deltas: about half
    assert abs(doc["overall"]["cosine"]) < 0.2


def test_svg(adapter_pair, tmp_path):
    svg = tmp_path / "pic.svg"
    result = invoke("inspect", adapter_pair[0], "--svg", svg)
    assert result.exit_code == 0
    text = svg.read_text()
    assert text.lstrip().startswith("<svg") and "q_proj" in text.replace("&#160;", " ")


def test_heatmap_fits_80_columns_for_32_layers(tmp_path):
    base = tiny_llama(tmp_path / "base32", layers=32)
    adapter = make_adapter(base, tmp_path / "a32", r=2, alpha=4)
    result = invoke("inspect", adapter)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if line.split() and line.split()[0].isdigit()]
    assert len(rows) == 32 and all(len(r.split()) >= 15 for r in rows)  # label + 7 × (shade, value)


def test_colour_when_forced(adapter_pair):
    result = runner.invoke(
        app, ["inspect", str(adapter_pair[0])], env={"FORCE_COLOR": "1", "NO_COLOR": None, "COLUMNS": "80"}
    )
    assert result.exit_code == 0
    assert "\x1b[" in result.stdout


def test_refuses_three_paths(adapter_pair):
    result = invoke("inspect", *adapter_pair, adapter_pair[0])
    assert result.exit_code == 2 and "one or two" in result.stderr


def test_an_adapter_that_cannot_be_merged_can_still_be_looked_at(base_dir, tmp_path):
    """An adapter with trained LoRA biases: inspect shows it and says why merging would refuse it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_bias=True),
    )
    model.save_pretrained(tmp_path / "biased")
    shown = runner.invoke(app, ["inspect", str(tmp_path / "biased")], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.stderr
    assert "cannot be merged: " in shown.stdout and "LoRA biases" in shown.stdout and "q_proj" in shown.stdout
    doc = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "biased"), "--json"]).stdout)
    assert doc["modules"] == 2 and any("LoRA biases" in p for p in doc["problems"])
    merged = runner.invoke(app, ["merge", str(tmp_path / "biased"), "-m", "linear", "-o", str(tmp_path / "m")])
    assert merged.exit_code == 2 and "cannot be merged exactly" in merged.stderr
