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

from loramix.core import dense, jsontext, params
from loramix.core.adapter_rules import (
    CONFIG_NAME,
    ROUTED_MANIFEST,
    check_config,
    config_problems,
    coverage_problems,
    key_problems,
    refuse_non_finite,
    refuse_non_float,
    unmergeable_kind,
)
from loramix.core.errors import AdapterError

if TYPE_CHECKING:
    import torch

    from loramix.core.dense import Rows
    from loramix.core.params import Slot

WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
PREFIX = "base_model.model."
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


@dataclass
class LoraModule:
    """One wrapped linear: ΔW = scale · B @ A, A is (r, in), B is (out, r)."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    slot: Slot | None = None  # for an expert of a 3-D parameter (loramix.core.params), where it lives
    magnitude: torch.Tensor | None = None  # DoRA's (out,): the delta then needs the base (loramix.core.dense)
    base_rows: Rows | None = None  # rows of the base weight, attached for DoRA before merging

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the base weight this delta is added to."""
        return (self.B.shape[0], self.A.shape[1])

    def delta(self, r0: int = 0, r1: int | None = None) -> torch.Tensor:
        """Rows r0:r1 of the (out, in) delta in float32 (all of it by default)."""
        if self.magnitude is not None:
            if self.base_rows is None:
                raise AdapterError("a DoRA module's delta needs its base's weights", hint="pass --base")
            return dense.dora_rows(self.A, self.B, self.scale, self.magnitude, self.base_rows, r0, r1 or self.shape[0])
        return self.scale * (self.B[r0:r1].float() @ self.A.float())


@dataclass
class Adapter:
    path: Path | None
    config: dict
    modules: dict[str, LoraModule] = field(default_factory=dict)
    # copies of base weights PEFT saves beside the LoRA (lm_head's when it is a target, embedding
    # layers with save_embedding_layers): module name -> tensor; checked against a base when one is given
    base_copies: dict[str, torch.Tensor] = field(default_factory=dict)
    # modules_to_save: full trained copies of base modules, name -> {"weight": ..., "bias": ...}
    saved: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
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
    problems = config_problems(path / CONFIG_NAME, config)
    tensors = _read_weights(path)
    problems += key_problems(path / WEIGHTS_NAME, tensors)
    if strict and problems:
        message, hint = problems[0]
        raise AdapterError(message, hint=hint)
    modules, copies, saved = _build_modules(path, config, tensors, skip=bool(problems), base=base)
    problems += coverage_problems(path, config, [n for n, m in modules.items() if m.slot is None])
    if strict and problems:
        message, hint = problems[0]
        raise AdapterError(message, hint=hint)
    return Adapter(
        path=path, config=config, modules=modules, base_copies=copies, saved=saved, problems=[m for m, _ in problems]
    )


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
    if not cfg_path.is_file() and (path / ROUTED_MANIFEST).is_file():
        raise AdapterError(
            f"{path}: is a routed mixture (fit-cat -m moe or arrow), not an adapter",
            hint="loramix eval and inspect read it; its skill adapters are under experts/",
        )
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
    check_config(cfg_path, config)
    return config


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
) -> tuple[dict[str, LoraModule], dict, dict]:
    """(LoRA modules, copies of base weights, modules_to_save) from the weights; `skip`: leave out
    the tensors the key check found unmergeable instead of calling them unexpected."""
    weights = path / WEIGHTS_NAME
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    copies: dict[str, torch.Tensor] = {}
    tensors = dict(tensors)
    saved = dense.split_saved(config, tensors, PREFIX)
    magnitudes = {
        k.removeprefix(PREFIX).removesuffix(dense.MAGNITUDE): tensors.pop(k)
        for k in list(tensors)
        if k.endswith(dense.MAGNITUDE)
    }
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
            elif not (skip and (trained or unmergeable_kind(key))):
                raise AdapterError(
                    f"{weights}: unexpected tensor {key!r}; not a LoRA A/B weight",
                    hint="loramix reads LoRA A and B weights and the copies of base weights PEFT saves beside them",
                )
    if not pairs and not saved and not skip:
        raise AdapterError(f"{weights}: holds no LoRA weights")
    targets = list(config.get("target_parameters") or [])
    on_params = {k: pairs.pop(k) for k in [k for k in pairs if targets and params.owns(k, targets)]}
    modules = {name: _build_module(weights, config, name, p) for name, p in sorted(pairs.items())}
    if on_params:
        modules.update(_param_modules(weights, config, on_params, targets, base))
    if magnitudes and not config.get("use_dora"):
        raise AdapterError(
            f"{weights}: holds DoRA magnitude vectors ({next(iter(magnitudes))}) but its config says "
            "use_dora: false, so PEFT would ignore them",
            hint="set use_dora to true, or remove them",
        )
    for name, magnitude in magnitudes.items():  # DoRA
        if name not in modules or magnitude.shape != (modules[name].shape[0],):
            raise AdapterError(
                f"{weights}: a DoRA magnitude vector {tuple(magnitude.shape)} for {name}, which has no "
                "LoRA of that many outputs"
            )
        refuse_non_float(weights, f"module {name} magnitude", magnitude)
        modules[name].magnitude = magnitude
    return modules, copies, saved


def _param_modules(weights: Path, config: dict, pairs: dict, targets: list[str], base: str | None) -> dict:
    """The experts of LoRAs on parameters, one LoraModule each (loramix.core.params)."""
    from loramix.core.models import local_folder

    for name, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{weights}: module {name} has no {'lora_B' if 'B' not in pair else 'lora_A'} weight")
        for part in ("A", "B"):
            refuse_non_float(weights, f"module {name} lora_{part}", pair[part])
            refuse_non_finite(weights, f"module {name} lora_{part}", pair[part])
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
        refuse_non_float(weights, f"module {name} {part}", t)
        refuse_non_finite(weights, f"module {name} {part}", t)
    return LoraModule(A=A, B=B, scale=module_scale(config, name, A.shape[0]))
