"""GPT-2 style Conv1D modules store W as (in, out): PEFT's fan_in_fan_out. Merges stay exact, and
--into-base reads the orientation from the base's own modules, not from the adapters' flag (a
4-bit GPT-2 has Linear layers, so an adapter trained on one records fan_in_fan_out false)."""

from __future__ import annotations

import json

import pytest
import torch

from loramix.core.adapters import read_adapter
from loramix.merge.job import MergeRequest, run_merge


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).save_pretrained(
        root / "base"
    )
    return root / "base", [_adapter(root / "base", root / f"a{seed}", ["c_attn", "c_fc"], seed) for seed in (1, 2)]


def _adapter(base, out, targets, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(base)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=True, init_lora_weights=False)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(out)
    c = json.loads((out / "adapter_config.json").read_text())
    c["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(c))
    return out


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


def _flag(adapter, value: bool):
    """The adapter as a run on a 4-bit base would have written it: same A and B, another flag."""
    c = json.loads((adapter / "adapter_config.json").read_text())
    c["fan_in_fan_out"] = value
    (adapter / "adapter_config.json").write_text(json.dumps(c))
    return adapter


def test_adapters_with_either_flag_merge_into_the_base_exactly(gpt2, tmp_path):
    import shutil

    from transformers import GPT2LMHeadModel

    base, paths = gpt2
    flipped = _flag(shutil.copytree(paths[1], tmp_path / "from-4bit"), False)
    weights = [0.8, -0.5]
    expected = _peft_both(base, paths, weights)  # PEFT corrects the flag from the Conv1D layers it finds
    run_merge(
        MergeRequest(
            adapters=[paths[0], flipped], method="linear", out=tmp_path / "full", weights=weights, into_base=str(base)
        )
    )
    assert torch.allclose(_logits(GPT2LMHeadModel.from_pretrained(tmp_path / "full")), expected, atol=1e-5)


def test_a_square_weight_of_an_unknown_architecture_is_refused(gpt2, tmp_path):
    import shutil

    from loramix.core.errors import InputError

    base, paths = gpt2
    square = _adapter(base, tmp_path / "square", ["attn.c_proj"], 3)  # c_proj: 32x32
    mystery = shutil.copytree(base, tmp_path / "mystery")
    config = json.loads((mystery / "config.json").read_text())
    config["model_type"] = "mystery"
    (mystery / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"cannot tell whether .* stores this 32x32 weight"):
        run_merge(MergeRequest(adapters=[square], method="linear", out=tmp_path / "o", into_base=str(mystery)))
    assert not (tmp_path / "o").exists()
    # a non-square one is told apart by its stored shape
    run_merge(MergeRequest(adapters=paths, method="linear", out=tmp_path / "ok", into_base=str(mystery)))


@pytest.mark.slow
def test_a_lora_trained_on_a_4bit_gpt2_merges_into_the_full_base(tmp_path):
    """The reported case: train-skill --load-in-4bit on GPT-2 (square attn.c_proj only), then
    merge --into-base the full-precision base; the merged model must equal PEFT's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from loramix.cli.app import app
    from tests.architectures import tiny_model

    base = tiny_model("gpt2", tmp_path / "base")
    runner = CliRunner()
    train = [
        "train-skill",
        "builtin:math",
        "-o",
        str(tmp_path / "q"),
        "--base",
        str(base),
        "--targets",
        "attn.c_proj",
        "--load-in-4bit",
        "--limit",
        "32",
        "--batch-size",
        "8",
        "--max-steps",
        "3",
        "--rank",
        "4",
        "--lr",
        "0.05",
        "--threads",
        "1",
        "--val-fraction",
        "0",
    ]
    assert runner.invoke(app, train).exit_code == 0
    assert json.loads((tmp_path / "q" / "adapter_config.json").read_text())["fan_in_fan_out"] is False
    result = runner.invoke(
        app, ["merge", str(tmp_path / "q"), "-m", "linear", "--into-base", str(base), "-o", str(tmp_path / "full")]
    )
    assert result.exit_code == 0, result.stderr
    ids = torch.randint(0, 1024, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()(input_ids=ids).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "q").eval()
        reference = peft(input_ids=ids).logits
        untouched = AutoModelForCausalLM.from_pretrained(base).eval()(input_ids=ids).logits
    assert not torch.allclose(reference, untouched, atol=1e-4)  # the LoRA changes something
    assert torch.allclose(merged, reference, atol=1e-4)
