"""LoRAs on 3-D expert parameters (PEFT's target_parameters) on a tiny Mixtral: read expert by
expert, merged exactly, reloaded by PEFT, and added into the base's expert tensors."""

from __future__ import annotations

import json

import pytest
import torch

from loramix.core.adapters import read_adapter
from loramix.merge.job import MergeRequest, run_merge
from tests.architectures import tiny_model

PARAMS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def _adapter(base, out, seed, targets=("q_proj",), params=PARAMS, r=2):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=list(targets), target_parameters=list(params), init_lora_weights=False
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(out)
    c = json.loads((out / "adapter_config.json").read_text())
    c["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(c))
    return out, peft_model


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixtral")
    base = tiny_model("mixtral", root / "base")
    a, peft_a = _adapter(base, root / "a", 1)
    b, _ = _adapter(base, root / "b", 2, r=3)
    return base, a, b, peft_a


def _ids():
    return torch.randint(0, 1024, (2, 9), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=_ids()).logits


def _with_deltas(base, adapters_weights):
    """The base with w · ΔW of every module and expert added by hand (W0 + Σ w ΔW)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for adapter, w in adapters_weights:
            for name, m in adapter.modules.items():
                d = w * m.delta()
                if m.slot is None:
                    params[f"{name}.weight"] += d
                else:
                    target = params[m.slot.key][m.slot.expert]
                    target += d.T if m.slot.transposed else d
    return _logits(model)


def test_every_expert_is_read_as_peft_computes_it(mixtral):
    _, a, _, peft_a = mixtral
    adapter = read_adapter(a)
    experts = {n: m for n, m in adapter.modules.items() if m.slot is not None}
    assert len(experts) == 2 * 2 * 4  # 2 layers × 2 parameters × 4 experts
    assert "model.layers.1.mlp.experts.3.gate_up_proj" in experts
    wrapper = peft_a.base_model.model.model.layers[1].mlp.experts  # the outer wrapper: down_proj
    assert wrapper.parameter_name == "down_proj"
    want = wrapper.get_delta_weight("default")  # (experts, out, in)
    for e in range(4):
        got = experts[f"model.layers.1.mlp.experts.{e}.down_proj"].delta()
        assert torch.allclose(got, want[e].float(), atol=1e-6)


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_merges_reload_in_peft_as_the_sum_of_the_deltas(mixtral, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, a, b, _ = mixtral
    report = run_merge(MergeRequest(adapters=[a, b], method=method, out=tmp_path / "m", weights=[0.7, -0.4]))
    config = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert config["target_parameters"] and all(
        k.endswith(("gate_up_proj", "down_proj")) for k in config["target_parameters"]
    )
    reloaded = _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "m"))
    if method == "linear":
        assert report.exact
        expected = _with_deltas(base, [(read_adapter(a), 0.7), (read_adapter(b), -0.4)])
    else:
        expected = _with_deltas(base, [(read_adapter(tmp_path / "m"), 1.0)])  # the written factors
    assert torch.allclose(reloaded, expected, atol=1e-4)
    assert not torch.allclose(reloaded, _logits(AutoModelForCausalLM.from_pretrained(base)), atol=1e-3)


def test_into_base_adds_each_expert_into_its_parameter(mixtral, tmp_path):
    from transformers import AutoModelForCausalLM

    base, a, b, _ = mixtral
    run_merge(
        MergeRequest(adapters=[a, b], method="linear", out=tmp_path / "full", weights=[1.0, 0.5], into_base=str(base))
    )
    expected = _with_deltas(base, [(read_adapter(a), 1.0), (read_adapter(b), 0.5)])
    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "full")), expected, atol=1e-4)


def test_one_targeted_parameter_nests_once(mixtral, tmp_path):
    """Only down_proj targeted: its wrapper is the outer and only one (no base_layer in its keys)."""
    from safetensors.torch import load_file

    base, *_ = mixtral
    one, _ = _adapter(base, tmp_path / "one", 3, params=["mlp.experts.down_proj"])
    assert not [k for k in load_file(one / "adapter_model.safetensors") if "base_layer" in k]
    adapter = read_adapter(one)
    assert {m.slot.param for m in adapter.modules.values() if m.slot} == {"down_proj"}
