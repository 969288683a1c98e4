"""Adapters as other trainers write them, each merged with a plain one: the merged adapter, reloaded
by PEFT, gives the logits of W0 plus the intended weighted sum of every module's delta."""

from __future__ import annotations

import pytest
import torch

from loramix.core.adapters import read_adapter
from loramix.merge.job import MergeRequest, run_merge
from tests.helpers import delta_logits, make_adapter, peft_logits

KINDS = {
    "all-linear": dict(targets="all-linear"),
    "lm_head targeted": dict(targets=["q_proj", "lm_head"]),
    "layers_to_transform": dict(targets=["q_proj", "v_proj"], layers_to_transform=[1]),
    "rank and alpha patterns": dict(r=4, rank_pattern={"v_proj": 6}, alpha_pattern={"down_proj": 2}),
    "rsLoRA": dict(r=8, alpha=4, use_rslora=True),
    "float16": dict(dtype=torch.float16),
    "bfloat16": dict(dtype=torch.bfloat16),
    "other targets and rank": dict(r=3, targets=["k_proj", "up_proj"]),
}


def _make(base, out, seed, *, targets=("q_proj", "v_proj", "down_proj"), layers_to_transform=None, **kw):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if layers_to_transform is None and not isinstance(targets, str):
        return make_adapter(base, out, seed=seed, targets=targets, **kw)
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=targets if isinstance(targets, str) else list(targets),  # "all-linear": PEFT's shorthand
            layers_to_transform=layers_to_transform,
            init_lora_weights=False,
        ),
    )
    peft_model.save_pretrained(out)
    import json

    c = json.loads((out / "adapter_config.json").read_text())
    c["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(c))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_merged_with_a_plain_adapter_reloads_as_the_sum(kind, base_dir, tmp_path):
    other = _make(base_dir, tmp_path / "other", 5, **KINDS[kind])
    plain = make_adapter(base_dir, tmp_path / "plain", r=2, seed=6)
    weights = [0.6, 1.2]
    report = run_merge(MergeRequest(adapters=[other, plain], method="linear", out=tmp_path / "m", weights=weights))
    assert report.exact
    want: dict[str, torch.Tensor] = {}
    for path, w in zip((other, plain), weights):
        for name, m in read_adapter(path).modules.items():
            want[name] = want.get(name, 0) + w * m.delta()
    atol = 1e-2 if kind in ("float16", "bfloat16") else 1e-5  # the written factors are in that dtype
    assert torch.allclose(peft_logits(base_dir, tmp_path / "m"), delta_logits(base_dir, want), atol=atol)
