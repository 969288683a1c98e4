"""Read, validate and write PEFT LoRA adapters: the only adapter I/O in loramix.

An adapter on disk is a folder with `adapter_config.json` and `adapter_model.safetensors`, keys like
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`. In memory it is an `Adapter`: the
parsed config plus one `LoraModule` (A, B, scale) per wrapped linear, keyed by the module's path in
the base model (`model.layers.0.self_attn.q_proj`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loramix.core import jsontext, params
from loramix.core.errors import AdapterError

if TYPE_CHECKING:
    import torch

    from loramix.core.params import Slot

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
PREFIX = "base_model.model."
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
# key fragment -> what it is, for inputs that cannot be merged exactly
_UNMERGEABLE_KEYS = {
    "lora_magnitude_vector": "DoRA magnitude vectors",
    "lora_embedding_A": "embedding LoRA",
    "lora_embedding_B": "embedding LoRA",
    "modules_to_save": "modules_to_save (fully trained copies of base modules)",
    "trainable_tokens": "trainable token embeddings",
}
# config field -> what it is, for adapters whose delta is not s·B·A on the recorded base
_UNMERGEABLE_FIELDS = {
    "use_dora": "DoRA",
    "modules_to_save": "fully trained copies of base modules",
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


@dataclass
class LoraModule:
    """One wrapped linear: ΔW = scale · B @ A, A is (r, in), B is (out, r)."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    slot: Slot | None = None  # for an expert of a 3-D parameter (loramix.core.params), where it lives

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the base weight this delta is added to."""
        return (self.B.shape[0], self.A.shape[1])

    def delta(self, r0: int = 0, r1: int | None = None) -> torch.Tensor:
        """Rows r0:r1 of the (out, in) delta in float32 (all of it by default)."""
        return self.scale * (self.B[r0:r1].float() @ self.A.float())


@dataclass
class Adapter:
    path: Path | None
    config: dict
    modules: dict[str, LoraModule] = field(default_factory=dict)
    # copies of base weights PEFT saves beside the LoRA (lm_head's when it is a target, embedding
    # layers with save_embedding_layers): module name -> tensor; checked against a base when one is given
    base_copies: dict[str, torch.Tensor] = field(default_factory=dict)
    # why it cannot be merged exactly (read with strict=False only; strict reading refuses instead)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name if self.path else "adapter"

    @property
    def base(self) -> str:
        return str(self.config.get("base_model_name_or_path") or "")

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.modules.values())).A.dtype

    @property
    def num_parameters(self) -> int:
        return sum(m.A.numel() + m.B.numel() for m in self.modules.values())

    def sha256(self) -> str | None:
        if self.path is None:
            return None
        digest = hashlib.sha256()
        with open(self.path / WEIGHTS_NAME, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def pattern_value(patterns: dict | None, module: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup: the first key that matches the end of the name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_scale(config: dict, module: str, rank: int) -> float:
    alpha = pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
    if config.get("use_rslora"):
        return float(alpha) / math.sqrt(rank)
    return float(alpha) / rank


def read_adapter(path: str | Path, strict: bool = True, base: str | None = None) -> Adapter:
    """Load and validate one adapter folder; every problem is an `AdapterError` naming the file.

    With strict=False (for looking, not merging) what makes it unmergeable is recorded in
    `problems` instead, and the LoRA modules it has are read all the same. LoRAs on parameters
    (target_parameters) are read with the architecture of `base`, else of the base it records.
    """
    path = Path(path)
    config = _read_config(path)
    problems = _config_problems(path / CONFIG_NAME, config)
    tensors = _read_weights(path)
    problems += _key_problems(path / WEIGHTS_NAME, tensors)
    if strict and problems:
        message, hint = problems[0]
        raise AdapterError(message, hint=hint)
    modules, copies = _build_modules(path, config, tensors, skip=bool(problems), base=base)
    problems += _coverage_problems(path, config, [n for n, m in modules.items() if m.slot is None])
    if strict and problems:
        message, hint = problems[0]
        raise AdapterError(message, hint=hint)
    return Adapter(path=path, config=config, modules=modules, base_copies=copies, problems=[m for m, _ in problems])


def _coverage_problems(path: Path, config: dict, names: list[str]) -> list[tuple[str, str]]:
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


def _read_config(path: Path) -> dict:
    if not path.exists():
        why = "is a symbolic link that loops" if path.is_symlink() else "no such adapter folder"
        raise AdapterError(f"{path}: {why}")
    if not path.is_dir():
        raise AdapterError(
            f"{path}: is a file, not an adapter folder",
            hint=f"an adapter is a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}",
        )
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise AdapterError(f"{cfg_path}: missing; {path} is not a PEFT adapter folder")
    try:
        config = jsontext.loads(cfg_path.read_text(), str(cfg_path))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})")
    except UnicodeDecodeError:
        raise AdapterError(f"{cfg_path}: not valid JSON (not UTF-8 text)")
    except OSError as e:
        raise AdapterError(f"{cfg_path}: cannot be read ({e.strerror or e})")
    if not isinstance(config, dict):
        raise AdapterError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")
    _check_config(cfg_path, config)
    return config


def _config_problems(cfg_path: Path, config: dict) -> list[tuple[str, str]]:
    """(message, hint) for what in the config makes the adapter unmergeable."""
    refused = _unmergeable_config(config)
    if not refused:
        return []
    init = any("init_lora_weights" in part for part in refused)
    return [(f"{cfg_path}: cannot be merged exactly: {'; '.join(refused)}", _INIT_HINT if init else _NEVER_DROPS)]


def _check_config(cfg_path: Path, config: dict) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{cfg_path}: peft_type is {peft_type}; loramix merges LoRA adapters only")
    if not str(config.get("base_model_name_or_path") or "").strip():
        raise AdapterError(
            f"{cfg_path}: records no base model (base_model_name_or_path is empty)",
            hint="set base_model_name_or_path to the model the adapter was trained on",
        )
    _check_numbers(cfg_path, config)


def _unmergeable_config(config: dict) -> list[str]:
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


def _check_numbers(cfg_path: Path, config: dict) -> None:
    """r, lora_alpha and the patterns must be numbers (and valid regexes) before any arithmetic."""
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    if not _is_number(r, whole=True) or r < 1:
        raise AdapterError(f"{cfg_path}: r must be a positive whole number, got {r!r}")
    if not _is_number(alpha):
        raise AdapterError(f"{cfg_path}: lora_alpha must be a number, got {alpha!r}")
    for key, whole in (("rank_pattern", True), ("alpha_pattern", False)):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise AdapterError(f"{cfg_path}: {key} must map module patterns to numbers, got {patterns!r}")
        for pattern, value in patterns.items():
            if not _is_number(value, whole=whole) or (whole and value < 1):
                raise AdapterError(f"{cfg_path}: {key} gives {pattern!r} the value {value!r}, not a valid {key[:-8]}")
            try:
                re.compile(pattern)
            except re.error as e:
                raise AdapterError(f"{cfg_path}: {key} key {pattern!r} is not a valid regular expression ({e})")


def _is_number(x, whole: bool = False) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return isinstance(x, int) if whole else math.isfinite(x)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [n for n in PICKLE_NAMES if (path / n).exists()]
        if pickled:
            raise AdapterError(
                f"{path / pickled[0]}: pickled weights; loramix reads safetensors only and never unpickles",
                hint=f"convert it to {WEIGHTS_NAME} in a trusted environment",
            )
        raise AdapterError(f"{weights}: missing")
    try:
        return load_file(str(weights))
    except Exception as e:  # safetensors raises its own error type, or OSError/ValueError
        raise AdapterError(f"{weights}: not a readable safetensors file, truncated or corrupt ({e})")


def _build_modules(
    path: Path, config: dict, tensors: dict, skip: bool, base: str | None = None
) -> tuple[dict[str, LoraModule], dict]:
    """(LoRA modules, copies of base weights) from the weights; `skip`: leave out the tensors the
    key check found unmergeable instead of calling them unexpected."""
    weights = path / WEIGHTS_NAME
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    copies: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        for suffix, part in ((A_SUFFIX, "A"), (B_SUFFIX, "B")):
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[part] = t
                break
        else:
            copy, trained = _plain_weight(name, config)
            if copy is not None:
                copies[copy] = t
            elif not (skip and (trained or _unmergeable_kind(key))):
                raise AdapterError(
                    f"{weights}: unexpected tensor {key!r}; not a LoRA A/B weight",
                    hint="loramix reads LoRA A and B weights and the copies of base weights PEFT saves beside them",
                )
    if not pairs and not skip:
        raise AdapterError(f"{weights}: holds no LoRA weights")
    targets = list(config.get("target_parameters") or [])
    on_params = {k: pairs.pop(k) for k in [k for k in pairs if targets and params.owns(k, targets)]}
    modules = {name: _build_module(weights, config, name, p) for name, p in sorted(pairs.items())}
    if on_params:
        modules.update(_param_modules(weights, config, on_params, targets, base))
    return modules, copies


def _param_modules(weights: Path, config: dict, pairs: dict, targets: list[str], base: str | None) -> dict:
    """The experts of LoRAs on parameters, one LoraModule each (loramix.core.params)."""
    from loramix.core.models import local_folder

    for name, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{weights}: module {name} has no {'lora_B' if 'B' not in pair else 'lora_A'} weight")
        for part in ("A", "B"):
            _refuse_non_float(weights, f"module {name} lora_{part}", pair[part])
            _refuse_non_finite(weights, f"module {name} lora_{part}", pair[part])
    folder = local_folder(base or str(config.get("base_model_name_or_path") or ""))
    experts = params.read(
        str(weights),
        {k: (p["A"], p["B"]) for k, p in pairs.items()},
        targets,
        folder,
        rank_of=lambda key, r: pattern_value(config.get("rank_pattern"), key, config.get("r", r)),
        scale_of=lambda key, r: module_scale(config, key, r),
    )
    return {slot.name: LoraModule(A=A, B=B, scale=scale, slot=slot) for slot, A, B, scale in experts}


# modules PEFT saves a plain copy of (save_embedding_layers) when they are not targets themselves
_EMBEDDINGS = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings", "embed_in")


def _plain_weight(name: str, config: dict) -> tuple[str | None, bool]:
    """What a tensor that is not a LoRA factor is (`name` without the prefix): (the module whose
    base weight it copies, or None; whether it is a trained module of modules_to_save). PEFT saves
    'lm_head.base_layer.weight' when lm_head is a target, and embedding layers themselves with
    save_embedding_layers; modules_to_save are full trained copies."""
    if not name.endswith((".weight", ".bias")) or "lora_" in name:
        return None, False
    module = name.rsplit(".", 1)[0]
    saved = config.get("modules_to_save") or []
    if module.rsplit(".", 1)[-1] in saved or module in saved:
        return None, True
    if name.endswith(".base_layer.weight"):
        return module.removesuffix(".base_layer"), False
    if name.endswith(".weight") and module.rsplit(".", 1)[-1] in _EMBEDDINGS:
        return module, False
    return None, False


def _unmergeable_kind(key: str) -> str | None:
    for fragment, what in _UNMERGEABLE_KEYS.items():
        if fragment in key:
            return what
    return "LoRA biases" if key.endswith(".bias") and "lora_" in key else None


def _key_problems(weights: Path, tensors: dict) -> list[tuple[str, str]]:
    found: dict[str, list[str]] = {}
    for key in tensors:
        what = _unmergeable_kind(key)
        if what:
            found.setdefault(what, []).append(key)
    if not found:
        return []
    parts = [
        f"{what} ({keys[0]}{f' and {len(keys) - 1} more' if len(keys) > 1 else ''})" for what, keys in found.items()
    ]
    return [(f"{weights}: cannot be merged exactly: {'; '.join(parts)}", _NEVER_DROPS)]


def _build_module(weights: Path, config: dict, name: str, pair: dict) -> LoraModule:
    if set(pair) != {"A", "B"}:
        missing = "lora_B" if "B" not in pair else "lora_A"
        raise AdapterError(f"{weights}: module {name} has no {missing} weight")
    A, B = pair["A"], pair["B"]
    if A.dim() != 2 or B.dim() != 2:
        raise AdapterError(f"{weights}: module {name} is not a linear LoRA (A has shape {tuple(A.shape)})")
    if A.shape[0] != B.shape[1]:
        raise AdapterError(
            f"{weights}: module {name}: shapes disagree, lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}"
        )
    expected = pattern_value(config.get("rank_pattern"), name, config.get("r", A.shape[0]))
    if int(expected) != A.shape[0]:
        raise AdapterError(f"{weights}: module {name} has rank {A.shape[0]} but {CONFIG_NAME} says r={expected}")
    for part, t in (("lora_A", A), ("lora_B", B)):
        _refuse_non_float(weights, f"module {name} {part}", t)
        _refuse_non_finite(weights, f"module {name} {part}", t)
    return LoraModule(A=A, B=B, scale=module_scale(config, name, A.shape[0]))


def _refuse_non_float(weights: Path, what: str, t: torch.Tensor) -> None:
    """Integers overflow, booleans halve a delta, complex numbers lose a part, and 8-bit floats are
    no format a LoRA is trained in: only float16, bfloat16, float32 and float64 are read."""
    import torch

    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise AdapterError(
            f"{weights}: {what} is {str(t.dtype).removeprefix('torch.')}; LoRA weights must be float16, bfloat16, "
            "float32 or float64",
            hint="save the adapter again in one of those",
        )


def _refuse_non_finite(weights: Path, what: str, t: torch.Tensor) -> None:
    import torch

    if torch.isfinite(t).all():
        return
    counts = {"NaN": int(torch.isnan(t).sum()), "Inf": int(torch.isinf(t).sum())}
    found = " and ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    raise AdapterError(
        f"{weights}: {what} holds {found} value{'s' if sum(counts.values()) > 1 else ''}",
        hint="its training diverged or the file is damaged; retrain it or restore a good copy",
    )
