"""Which base adapters are for: two spellings of one base are one base; adapters for different
bases are refused with what to do; merge --base merges them onto a named base with every module's
shape checked against it; copies of base weights adapters hold are checked against the base."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.core.models import base_identity, bundled_path, same_base
from tests.helpers import delta_logits, make_adapter, peft_logits

runner = CliRunner(env={"COLUMNS": "1000"})


def _record(adapter, base: str):
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter


def test_the_bundled_name_and_its_folder_are_one_base(tmp_path):
    assert same_base("loramix-tiny", str(bundled_path()))
    assert same_base("loramix-tiny", str(bundled_path()) + "/")
    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert base_identity(str(snapshot)) == "hub:org/model" and same_base("org/model", str(snapshot))
    assert not same_base("org/model", "org/other") and not same_base("loramix-tiny", str(tmp_path))


def test_adapters_recording_the_bundled_model_two_ways_merge(tmp_path):
    a = _record(make_adapter(bundled_path(), tmp_path / "a", r=2, seed=1, targets=["q_proj"]), "loramix-tiny")
    b = _record(make_adapter(bundled_path(), tmp_path / "b", r=2, seed=2, targets=["q_proj"]), str(bundled_path()))
    result = runner.invoke(app, ["merge", str(a), str(b), "-m", "linear", "-o", str(tmp_path / "m"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["warnings"] == []


@pytest.fixture
def two_bases(base_dir, tmp_path):
    """One adapter recording a hub id, one a local folder: the same weights, as far as anyone can tell."""
    a = _record(make_adapter(base_dir, tmp_path / "a", r=4, seed=1), "meta-llama/Llama-3.2-1B")
    b = make_adapter(base_dir, tmp_path / "b", r=4, seed=2)
    return a, b


def test_different_bases_are_refused_with_what_to_do(two_bases, tmp_path):
    result = runner.invoke(app, ["merge", *map(str, two_bases), "-m", "linear", "-o", str(tmp_path / "m")])
    assert result.exit_code == 2 and "adapters for different bases" in result.stderr
    assert "pass --base BASE" in result.stderr and not (tmp_path / "m").exists()


def test_base_merges_them_onto_it_checking_every_shape(two_bases, base_dir, tmp_path):
    a, b = two_bases
    result = runner.invoke(
        app, ["merge", str(a), str(b), "-m", "linear", "--base", str(base_dir), "-o", str(tmp_path / "m"), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [w for w in report["warnings"] if "meta-llama/Llama-3.2-1B" in w and "records the base" in w]
    written = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == str(base_dir.resolve())
    # a base whose shapes differ is refused before anything is written
    from transformers import LlamaConfig, LlamaForCausalLM

    wide = tmp_path / "wide"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(wide)
    refused = runner.invoke(
        app, ["merge", str(a), str(b), "-m", "linear", "--base", str(wide), "-o", str(tmp_path / "x")]
    )
    assert refused.exit_code == 2 and "the base weight has shape" in refused.stderr and not (tmp_path / "x").exists()


def test_base_and_into_base_must_agree(two_bases, base_dir, tmp_path):
    result = runner.invoke(
        app,
        [
            "merge",
            *map(str, two_bases),
            "-m",
            "linear",
            "--base",
            "loramix-tiny",
            "--into-base",
            str(base_dir),
            "-o",
            str(tmp_path / "m"),
        ],
    )
    assert result.exit_code == 2 and "name different models" in result.stderr


# --- adapters with the output head as a target --------------------------------------------------


@pytest.fixture
def head_adapters(base_dir, tmp_path):
    """PEFT's own adapters targeting lm_head: they hold lm_head.base_layer.weight, a copy of the base."""
    from safetensors.torch import load_file

    paths = [make_adapter(base_dir, tmp_path / f"h{i}", r=2, seed=i, targets=["q_proj", "lm_head"]) for i in (1, 2)]
    assert "base_model.model.lm_head.base_layer.weight" in load_file(paths[0] / "adapter_model.safetensors")
    return paths


def test_an_output_head_lora_merges_exactly(head_adapters, base_dir, tmp_path):
    from loramix.core.adapters import read_adapter

    result = runner.invoke(
        app, ["merge", *map(str, head_adapters), "-m", "linear", "-w", "0.5,1.5", "-o", str(tmp_path / "m")]
    )
    assert result.exit_code == 0, result.stderr
    assert "copies of the base's lm_head" in result.stderr and "left out" in result.stderr
    want: dict[str, torch.Tensor] = {}
    for path, w in zip(head_adapters, (0.5, 1.5)):
        for name, m in read_adapter(path).modules.items():
            want[name] = want.get(name, 0) + w * m.delta()
    assert "lm_head" in want
    assert torch.allclose(peft_logits(base_dir, tmp_path / "m"), delta_logits(base_dir, want), atol=1e-5)


def test_the_base_copies_are_checked_against_the_base(head_adapters, base_dir, tmp_path):
    ok = runner.invoke(
        app, ["merge", *map(str, head_adapters), "-m", "ties", "--base", str(base_dir), "-o", str(tmp_path / "m")]
    )
    assert ok.exit_code == 0 and "match" in ok.stderr, ok.stderr
    changed = shutil.copytree(base_dir, tmp_path / "changed")
    from safetensors.torch import load_file, save_file

    weights = load_file(changed / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] + 0.5
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    refused = runner.invoke(
        app, ["merge", *map(str, head_adapters), "-m", "linear", "--into-base", str(changed), "-o", str(tmp_path / "x")]
    )
    assert refused.exit_code == 2 and "its copy of lm_head.weight differs" in refused.stderr
    assert not (tmp_path / "x").exists()


def test_a_loaded_base_checks_the_copies_too(head_adapters, base_dir):
    """fit-cat and eval load the base: lm_head is one of its linear modules, and a copy that differs
    from its weight is refused."""
    from transformers import AutoModelForCausalLM

    from loramix.core.adapters import read_adapter
    from loramix.core.errors import AdapterError
    from loramix.core.targets import check_adapter_shapes

    adapters = [read_adapter(p) for p in head_adapters]
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    check_adapter_shapes(model, adapters)
    with torch.no_grad():
        model.lm_head.weight += 1.0
    with pytest.raises(AdapterError, match=r"its copy of lm_head\.weight differs"):
        check_adapter_shapes(model, adapters)


def test_eval_with_a_local_base_warns_about_an_adapter_recording_a_hub_id(tmp_path):
    a = _record(
        make_adapter(bundled_path(), tmp_path / "a", r=2, seed=1, targets=["q_proj"]), "meta-llama/Llama-3.2-1B"
    )
    result = runner.invoke(
        app,
        [
            "eval",
            "-d",
            "builtin:math",
            "--limit",
            "2",
            "--max-new-tokens",
            "2",
            "-a",
            str(a),
            "--base",
            "loramix-tiny",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "records the base 'meta-llama/Llama-3.2-1B'; used with loramix-tiny" in " ".join(result.stderr.split())
