"""Writing adapters: the config, the profile that lays out merged factors (scale 1, float32), the files.

- `peft`: each module at its own rank; one `r` plus `rank_pattern`/`alpha_pattern` for the rest,
  with alpha equal to rank everywhere so the runtime scale is 1.
- `portable`: what every serving runtime loads (vLLM reads only the global r and alpha, llama.cpp's
  converter one alpha per file): one uniform rank, zero-padded, `lora_alpha == r`, no patterns.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from loramix.core import params
from loramix.core.adapters import A_SUFFIX, B_SUFFIX, CONFIG_NAME, PREFIX, WEIGHTS_NAME
from loramix.core.errors import InputError

if TYPE_CHECKING:
    import torch

    from loramix.core.params import Slot


class Profile(str, Enum):
    peft = "peft"
    portable = "portable"


PROFILES = tuple(p.value for p in Profile)


def pad_rank(A: torch.Tensor, B: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad A (r, in) and B (out, r) to `rank`; B @ A is unchanged."""
    import torch

    extra = rank - A.shape[0]
    if extra <= 0:
        return A, B
    return (
        torch.cat([A, A.new_zeros(extra, A.shape[1])], dim=0),
        torch.cat([B, B.new_zeros(B.shape[0], extra)], dim=1),
    )


def layout(
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    profile: str,
    template: dict,
    base: str,
    dtype: torch.dtype,
    slots: dict[str, Slot] | None = None,
    saved: list[str] | None = None,
) -> tuple[dict, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(adapter_config, factors cast to `dtype`, keyed by the module path they are saved under) for
    the chosen profile. Experts of a parameter (`slots`: module name -> where it lives) are packed
    into their parameter's wrapper (loramix.core.params)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    slots = slots or {}
    if profile == "portable":
        rank = max(A.shape[0] for A, _ in factors.values())
        factors = {n: pad_rank(A, B, rank) for n, (A, B) in factors.items()}
    linear = {n: f for n, f in factors.items() if n not in slots}
    wrappers, param_ranks = _wrappers({n: f for n, f in factors.items() if n in slots}, slots)
    ranks = {n: A.shape[0] for n, (A, _) in linear.items()} | param_ranks
    config = lora_config(template, ranks=ranks, base=base, params=sorted(param_ranks), saved=saved)
    return config, {n: (A.to(dtype), B.to(dtype)) for n, (A, B) in (linear | wrappers).items()}


def _wrappers(experts: dict, slots: dict[str, Slot]) -> tuple[dict, dict[str, int]]:
    """({saved module path: packed (A, B)}, {parameter key: rank}) for the experts' factors."""
    by_key: dict[str, list] = {}
    for name, (A, B) in experts.items():
        by_key.setdefault(slots[name].key, []).append((slots[name], A, B))
    orders: dict[str, list[int]] = {}
    for pieces in by_key.values():
        orders.setdefault(pieces[0][0].module, []).append(pieces[0][0].order)
    packed, ranks = {}, {}
    for key, pieces in by_key.items():
        rank = max(A.shape[0] for _, A, _ in pieces)
        pieces = [(s, *pad_rank(A, B, rank)) for s, A, B in pieces]
        slot = pieces[0][0]
        packed[params.key_module(slot, orders[slot.module])] = params.pack(pieces)
        ranks[key] = rank
    return packed, ranks


# fields of an input config carried into a written one; everything else is set explicitly or dropped
# (an unknown field such as exclude_modules or layer_replication could change what PEFT loads)
_KEPT_CONFIG_KEYS = ("task_type", "revision", "fan_in_fan_out", "lora_dropout", "auto_mapping")


def lora_config(
    template: dict, *, ranks: dict[str, int], base: str, params: list[str] | None = None, saved: list[str] | None = None
) -> dict:
    """A clean PEFT LoRA config for modules whose scale is baked into B (runtime scale 1).

    The most common rank becomes `r` (and `lora_alpha`); other modules get `rank_pattern` and
    `alpha_pattern` entries equal to their rank, so every module's scale is exactly 1. Pattern keys
    are `^` + the escaped full name: PEFT matches a key against the end of a module's name, so an
    unanchored `a.b` would also match a module `x.a.b`. `params` are the full names of the 3-D
    parameters LoRAs are written for (target_parameters; their ranks are in `ranks` too).
    """
    counts: dict[int, int] = {}
    for r in ranks.values():
        counts[r] = counts.get(r, 0) + 1
    r = max(counts, key=lambda k: (counts[k], k))
    pattern = {"^" + re.escape(name): rk for name, rk in ranks.items() if rk != r}
    config = {k: template[k] for k in _KEPT_CONFIG_KEYS if k in template}
    config.update(
        peft_type="LORA",
        base_model_name_or_path=base,
        r=r,
        lora_alpha=r,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        use_rslora=False,
        use_dora=False,
        modules_to_save=list(saved) if saved else None,
        bias="none",
        target_modules=target_modules([n for n in ranks if n not in (params or [])]),
        target_parameters=list(params) if params else None,
        layers_to_transform=None,
        layers_pattern=None,
        init_lora_weights=True,
        inference_mode=True,
    )
    config.setdefault("task_type", "CAUSAL_LM")
    return config


def target_modules(names: list[str]) -> list[str]:
    """PEFT's target_modules: the module kinds (q_proj, ...) when every kind is in the same layers,
    else the full names, so that no layer gets empty LoRA modules for a kind it does not have."""
    from loramix.core.modules import parse

    layers: dict[str, set] = {}
    for name in names:
        layers.setdefault(name.rsplit(".", 1)[-1], set()).add(parse(name).layer)
    if len({frozenset(v) for v in layers.values()}) <= 1:
        return sorted(layers)
    return sorted(names)


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """A result holding Inf or NaN is refused before it is written: a weight, a lora_alpha or a
    merge far too large overflowed (in float32, or in the half-precision dtype written)."""
    import torch

    if all(bool(torch.isfinite(t).all()) for t in tensors):
        return
    raise InputError(
        f"the merged weights of {name} are not finite (Inf or NaN): they overflowed",
        hint="check the --weights and each adapter's lora_alpha for values far too large",
    )


def write_adapter(folder: Path, config: dict, factors: dict[str, tuple], full: dict | None = None) -> None:
    """Write `adapter_config.json` and `adapter_model.safetensors` (PEFT's key names) into `folder`;
    `full` holds whole tensors of modules_to_save ('lm_head.weight' -> tensor)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (A, B) in factors.items():
        check_finite(name, A, B)
        tensors[f"{PREFIX}{name}{A_SUFFIX}"] = A.contiguous()
        tensors[f"{PREFIX}{name}{B_SUFFIX}"] = B.contiguous()
    for key, t in (full or {}).items():
        check_finite(key, t)
        tensors[f"{PREFIX}{key}"] = t.contiguous()
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
