"""What makes an adapter readable, and mergeable exactly: the checks read_adapter applies to its
config and tensors, each failure an AdapterError (or, for looking only, a recorded problem) that
names the file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from loramix.core.errors import AdapterError

if TYPE_CHECKING:
    import torch

CONFIG_NAME = "adapter_config.json"
ROUTED_MANIFEST = "loramix_routed.json"  # a routed mixture (core/routing.py), which is no adapter

# key fragment -> what it is, for inputs that cannot be merged exactly
_UNMERGEABLE_KEYS = {
    "lora_embedding_A": "embedding LoRA",
    "lora_embedding_B": "embedding LoRA",
    "trainable_tokens": "trainable token embeddings",
}
# config field -> what it is, for adapters whose delta is not s·B·A on the recorded base
_UNMERGEABLE_FIELDS = {
    "lora_bias": "LoRA biases",
    "alora_invocation_tokens": "activated LoRA (it acts only after its invocation tokens)",
    "use_qalora": "QA-LoRA (it acts on pooled inputs)",
    "trainable_token_indices": "trainable token embeddings",
}
# init_lora_weights values that rewrite the base weights when the adapter is created
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
_NEVER_DROPS = "loramix never drops parts of an adapter silently; retrain or strip them first"
_INIT_HINT = (
    "such an adapter is relative to a modified base; save it with PEFT's "
    "path_initial_model_for_weight_conversion to get an ordinary LoRA"
)


def coverage_problems(path: Path, config: dict, names: list[str]) -> list[tuple[str, str]]:
    """Stored modules PEFT would not load (loramix.core.coverage): merge would use them, eval not."""
    from loramix.core.coverage import unloaded

    left = unloaded(config, names)
    if not left:
        return []
    return [
        (
            f"{path / CONFIG_NAME}: target_modules {json.dumps(config.get('target_modules'))} leaves out {len(left)} of "
            f"the {len(names)} modules the weights hold (e.g. {left[0]}); PEFT would ignore them",
            "fix target_modules (or layers_to_transform) in adapter_config.json, or remove those weights",
        )
    ]


def config_problems(cfg_path: Path, config: dict) -> list[tuple[str, str]]:
    """(message, hint) for what in the config makes the adapter unmergeable."""
    refused = unmergeable_config(config)
    if not refused:
        return []
    init = any("init_lora_weights" in part for part in refused)
    return [(f"{cfg_path}: cannot be merged exactly: {'; '.join(refused)}", _INIT_HINT if init else _NEVER_DROPS)]


def check_config(cfg_path: Path, config: dict) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{cfg_path}: peft_type is {peft_type}; loramix merges LoRA adapters only")
    if not str(config.get("base_model_name_or_path") or "").strip():
        raise AdapterError(
            f"{cfg_path}: records no base model (base_model_name_or_path is empty)",
            hint="set base_model_name_or_path to the model the adapter was trained on",
        )
    check_numbers(cfg_path, config)


def unmergeable_config(config: dict) -> list[str]:
    """What in the config makes the adapter something other than ΔW = s·B·A on its base."""
    refused = [
        f"{what} ({key}: {json.dumps(config[key])})" for key, what in _UNMERGEABLE_FIELDS.items() if config.get(key)
    ]
    if config.get("bias", "none") not in ("none", None):
        refused.append(f"trained biases (bias: {config['bias']!r})")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        refused.append(f"an initialisation that changed the base weights (init_lora_weights: {init!r})")
    return refused


def check_numbers(cfg_path: Path, config: dict) -> None:
    """r, lora_alpha and the patterns must be numbers (and valid regexes) before any arithmetic."""
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    if not is_number(r, whole=True) or r < 1:
        raise AdapterError(f"{cfg_path}: r must be a positive whole number, got {r!r}")
    if not is_number(alpha):
        raise AdapterError(f"{cfg_path}: lora_alpha must be a number, got {alpha!r}")
    for key, whole in (("rank_pattern", True), ("alpha_pattern", False)):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise AdapterError(f"{cfg_path}: {key} must map module patterns to numbers, got {patterns!r}")
        for pattern, value in patterns.items():
            if not is_number(value, whole=whole) or (whole and value < 1):
                raise AdapterError(f"{cfg_path}: {key} gives {pattern!r} the value {value!r}, not a valid {key[:-8]}")
            try:
                re.compile(pattern)
            except re.error as e:
                raise AdapterError(f"{cfg_path}: {key} key {pattern!r} is not a valid regular expression ({e})")


def is_number(x, whole: bool = False) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return isinstance(x, int) if whole else math.isfinite(x)


def unmergeable_kind(key: str) -> str | None:
    for fragment, what in _UNMERGEABLE_KEYS.items():
        if fragment in key:
            return what
    return "LoRA biases" if key.endswith(".bias") and "lora_" in key else None


def key_problems(weights: Path, tensors: dict) -> list[tuple[str, str]]:
    found: dict[str, list[str]] = {}
    for key in tensors:
        what = unmergeable_kind(key)
        if what:
            found.setdefault(what, []).append(key)
    if not found:
        return []
    parts = [
        f"{what} ({keys[0]}{f' and {len(keys) - 1} more' if len(keys) > 1 else ''})" for what, keys in found.items()
    ]
    return [(f"{weights}: cannot be merged exactly: {'; '.join(parts)}", _NEVER_DROPS)]


def refuse_non_float(weights: Path, what: str, t: torch.Tensor) -> None:
    """Integers overflow, booleans halve a delta, complex numbers lose a part, and 8-bit floats are
    no format a LoRA is trained in: only float16, bfloat16, float32 and float64 are read."""
    import torch

    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise AdapterError(
            f"{weights}: {what} is {str(t.dtype).removeprefix('torch.')}; LoRA weights must be float16, bfloat16, "
            "float32 or float64",
            hint="save the adapter again in one of those",
        )


def refuse_non_finite(weights: Path, what: str, t: torch.Tensor) -> None:
    import torch

    if torch.isfinite(t).all():
        return
    counts = {"NaN": int(torch.isnan(t).sum()), "Inf": int(torch.isinf(t).sum())}
    found = " and ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    raise AdapterError(
        f"{weights}: {what} holds {found} value{'s' if sum(counts.values()) > 1 else ''}",
        hint="its training diverged or the file is damaged; retrain it or restore a good copy",
    )
