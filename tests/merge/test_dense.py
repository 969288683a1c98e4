"""DoRA adapters and modules_to_save, merged as deltas against the base: exactly into the base,
and as an adapter (DoRA by SVD, with the error reported; modules_to_save as whole tensors)."""

from __future__ import annotations

import json

import pytest
import torch

from loramix.merge.job import MergeRequest, run_merge
from tests.helpers import logits


def _peft(base, out, seed, **config):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(init_lora_weights=False, **config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.3 * torch.rand_like(p))  # as if trained: not the base's own norms
            elif "lora_" in name:
                p.normal_(0, 0.2)
            elif "modules_to_save" in name:
                p.add_(0.1 * torch.randn_like(p))  # a trained copy of the module
    model.save_pretrained(out)
    c = json.loads((out / "adapter_config.json").read_text())
    c["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(c))
    return out


def _merged_by_peft(base, adapters_weights):
    """The base with w · (W'_i − W0) of each adapter added, W'_i from PEFT's own merge_and_unload."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    total = {k: v.clone() for k, v in start.items()}
    for path, w in adapters_weights:
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path).merge_and_unload()
        for k, v in merged.state_dict().items():
            total[k] += w * (v - start[k])
    model.load_state_dict(total)
    return logits(model.eval())


@pytest.fixture(scope="module")
def doras(base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dora")
    a = _peft(base_dir, root / "a", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True)
    b = _peft(base_dir, root / "b", 2, r=2, lora_alpha=2, target_modules=["q_proj", "up_proj"], use_dora=True)
    return a, b


def test_dora_merges_exactly_into_the_base(doras, base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    report = run_merge(
        MergeRequest(
            adapters=list(doras), method="linear", out=tmp_path / "full", weights=[0.8, -0.5], into_base=str(base_dir)
        )
    )
    expected = _merged_by_peft(base_dir, zip(doras, (0.8, -0.5)))
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()), expected, atol=1e-5)
    assert report.exact


def test_dora_as_an_adapter_is_its_svd_with_the_error_reported(doras, base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    exact_rank = run_merge(
        MergeRequest(adapters=list(doras), method="linear", out=tmp_path / "full-rank", rank=32, weights=[1.0, 1.0])
    )  # hidden 32: rank 32 holds any delta
    assert exact_rank.error_max < 1e-5 and any("DoRA" in w for w in exact_rank.warnings)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "full-rank")
    assert torch.allclose(logits(reloaded.eval()), _merged_by_peft(base_dir, zip(doras, (1.0, 1.0))), atol=1e-4)
    low = run_merge(MergeRequest(adapters=list(doras), method="linear", out=tmp_path / "low", weights=[1.0, 1.0]))
    assert not low.exact and 0 < low.error_max < 1  # default rank: the inputs' ranks summed (6)


def test_modules_to_save_merge_as_weighted_deltas(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a = _peft(base_dir, tmp_path / "a", 1, r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    b = _peft(base_dir, tmp_path / "b", 2, r=2, lora_alpha=4, target_modules=["k_proj"], modules_to_save=["lm_head"])
    report = run_merge(MergeRequest(adapters=[a, b], method="linear", out=tmp_path / "m", weights=[0.5, 0.5]))
    assert any("modules_to_save (lm_head)" in w for w in report.warnings)
    assert json.loads((tmp_path / "m" / "adapter_config.json").read_text())["modules_to_save"] == ["lm_head"]
    expected = _merged_by_peft(base_dir, [(a, 0.5), (b, 0.5)])
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "m")
    assert torch.allclose(logits(reloaded.eval()), expected, atol=1e-5)
    run_merge(
        MergeRequest(
            adapters=[a, b], method="linear", out=tmp_path / "full", weights=[0.5, 0.5], into_base=str(base_dir)
        )
    )
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()), expected, atol=1e-5)


def test_without_a_base_on_this_machine_they_are_refused(doras, tmp_path):
    import shutil

    from loramix.core.errors import InputError

    moved = shutil.copytree(doras[0], tmp_path / "elsewhere")
    c = json.loads((moved / "adapter_config.json").read_text())
    c["base_model_name_or_path"] = "some-org/not-here"
    (moved / "adapter_config.json").write_text(json.dumps(c))
    with pytest.raises(InputError, match="its base 'some-org/not-here' is not on this machine"):
        run_merge(MergeRequest(adapters=[moved], method="linear", out=tmp_path / "o"))
