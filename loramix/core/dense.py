"""Parts of an adapter whose effect is not s·B·A alone and needs the base's weights to compute.

- DoRA (use_dora): the merged weight is m ⊙ V / ‖V‖, V = W0 + s·B·A, the norm taken per output
  row over the inputs and m the stored magnitude vector (out,); its delta is that minus W0.
- modules_to_save: full trained copies of base modules (a new lm_head or embed_tokens for chat
  tokens); their delta is the copy minus W0.

Both are merged as deltas against the base (merge --base, --into-base, or the base the adapters
record when it is on this machine); nothing here guesses a base weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MAGNITUDE = ".lora_magnitude_vector"
Rows = Callable[[int, int], "torch.Tensor"]  # rows r0:r1 of a base weight, (out, in), float32


def dora_rows(A: torch.Tensor, B: torch.Tensor, scale: float, magnitude: torch.Tensor, base: Rows, r0: int, r1: int):
    """Rows r0:r1 of a DoRA module's delta: m ⊙ V / ‖V‖ − W0 with V = W0 + s·B·A (row norms)."""
    w0 = base(r0, r1)
    v = w0 + scale * (B[r0:r1].float() @ A.float())
    return (magnitude[r0:r1].float() / v.norm(dim=1)).unsqueeze(1) * v - w0


def split_saved(config: dict, tensors: dict, prefix: str) -> dict[str, dict[str, torch.Tensor]]:
    """Take the modules_to_save tensors out of `tensors`: module name -> {"weight": ..., "bias": ...}.
    PEFT saves them as '<module>.weight' (older versions '<module>.modules_to_save.<adapter>.weight')."""
    saved_names = config.get("modules_to_save") or []
    if not saved_names:
        return {}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key in list(tensors):
        name = key.removeprefix(prefix)
        if "lora_" in name or not name.endswith((".weight", ".bias")):
            continue
        module, _, param = name.rpartition(".")
        if ".modules_to_save." in module:
            module = module.split(".modules_to_save.", 1)[0]
        elif ".original_module" in module:  # PEFT's own copy of the untouched base module
            del tensors[key]
            continue
        if module.rsplit(".", 1)[-1] in saved_names or module in saved_names:
            out.setdefault(module, {})[param] = tensors.pop(key)
    return out


def merged_saved(copies: list[tuple[torch.Tensor | None, float]], base: torch.Tensor) -> torch.Tensor:
    """One module_to_save merged as task arithmetic on its deltas: W0 + Σ w_i (M_i − W0), an
    adapter without the module adding nothing (computed in float32, returned in W0's dtype)."""
    merged = base.float().clone()
    for copy, weight in copies:
        if copy is not None:
            merged += weight * (copy.float() - base.float())
    return merged.to(base.dtype)
