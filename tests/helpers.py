"""Builders for tests: a tiny Llama saved like any local model, adapters written by PEFT itself."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def make_adapter(
    base: Path,
    out: Path,
    *,
    r: int = 4,
    alpha: float = 8,
    seed: int = 0,
    targets=TARGETS,
    use_rslora: bool = False,
    rank_pattern=None,
    alpha_pattern=None,
    scale_b: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A LoRA saved by PEFT with random, non-zero A and B (as if trained)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(targets),
        use_rslora=use_rslora,
        rank_pattern=rank_pattern or {},
        alpha_pattern=alpha_pattern or {},
        init_lora_weights=False,
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2 * scale_b)
            elif "lora_A" in name:
                p.normal_(0, 0.2)
    peft_model = peft_model.to(dtype)
    peft_model.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def peft_logits(base: Path, adapter: Path) -> torch.Tensor:
    """Logits of `adapter` loaded the ordinary way: PeftModel.from_pretrained on the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    return logits(PeftModel.from_pretrained(model, adapter).eval())


def delta_logits(base: Path, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the base with W0 + ΔW written into the named modules' weights by hand."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in deltas.items():
            params[f"{name}.weight"] += d
    return logits(model.eval())
