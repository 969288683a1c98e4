"""GPT-2 style Conv1D modules store W as (in, out): PEFT's fan_in_fan_out. Merges stay exact."""

from __future__ import annotations

import json

import pytest
import torch

from loramix.core.adapters import read_adapter
from loramix.merge.job import MergeRequest, run_merge


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).save_pretrained(
        root / "base"
    )
    paths = []
    for seed in (1, 2):
        model = GPT2LMHeadModel.from_pretrained(root / "base")
        cfg = LoraConfig(
            r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, init_lora_weights=False
        )
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, cfg)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_" in n:
                    p.normal_(0, 0.3)
        out = root / f"a{seed}"
        peft_model.save_pretrained(out)
        c = json.loads((out / "adapter_config.json").read_text())
        c["base_model_name_or_path"] = str(root / "base")
        (out / "adapter_config.json").write_text(json.dumps(c))
        paths.append(out)
    return root / "base", paths


def _logits(model):
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def _peft_both(base, paths, weights):
    """PEFT with both adapters merged into the weights one after the other, scaled by their weights."""
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(base)
    for p, w in zip(paths, weights):
        model = PeftModel.from_pretrained(model, p)
        for module in model.modules():
            if isinstance(getattr(module, "scaling", None), dict) and "default" in module.scaling:
                module.scaling["default"] *= w
        model = model.merge_and_unload()
    return _logits(model)


def test_merge_and_into_base_are_exact_for_conv1d(gpt2, tmp_path):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    base, paths = gpt2
    weights = [0.8, -0.5]
    expected = _peft_both(base, paths, weights)
    run_merge(MergeRequest(adapters=paths, method="linear", out=tmp_path / "ad", weights=weights))
    assert read_adapter(tmp_path / "ad").config["fan_in_fan_out"] is True
    merged = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), tmp_path / "ad")
    assert torch.allclose(_logits(merged), expected, atol=1e-5)
    run_merge(
        MergeRequest(adapters=paths, method="linear", out=tmp_path / "full", weights=weights, into_base=str(base))
    )
    assert torch.allclose(_logits(GPT2LMHeadModel.from_pretrained(tmp_path / "full")), expected, atol=1e-5)
    assert not torch.allclose(expected, _logits(GPT2LMHeadModel.from_pretrained(base)), atol=1e-3)
