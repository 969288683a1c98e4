"""The bundled loramix-tiny: loadable like any local model, small, recorded, and its tokenizer
round-trips every built-in skill's text."""

from __future__ import annotations

import json

import pytest

from loramix.core import models
from loramix.train import pretrain
from loramix.zoo.skills import SKILLS, rows


def test_bundled_model_is_small_and_loads_with_auto_classes():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.resolve_base("loramix-tiny")
    size = sum(p.stat().st_size for p in path.iterdir())
    assert size < 20 * 2**20, size
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama" and len(tokenizer) <= model.config.vocab_size
    assert 5e6 < sum(p.numel() for p in model.parameters()) < 10e6


def test_pretraining_is_recorded_for_a_rebuild():
    record = json.loads((models.bundled_path() / "pretrain.json").read_text())
    assert record["seed"] == 0 and record["steps"] >= 1000
    assert record["rebuild"].startswith("python -m loramix.train.pretrain")
    assert record["held_out_loss"] < 1.5 and record["seconds"] < 30 * 60


def test_tokenizer_round_trips_every_skill():
    tokenizer = models.load_tokenizer(models.bundled_path())
    for name in SKILLS:
        for row in rows(name, "eval", 20):
            for text in (row["prompt"], row["completion"]):
                assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


@pytest.mark.slow
def test_pretraining_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    a = pretrain.pretrain(tmp_path / "a", seed=3, steps=2, batch=2, length=32, lr=1e-3, threads=1, tokenizer_docs=2000)
    b = pretrain.pretrain(tmp_path / "b", seed=3, steps=2, batch=2, length=32, lr=1e-3, threads=1, tokenizer_docs=2000)
    assert a["loss_every_50_steps"] == b["loss_every_50_steps"]
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
