"""Output profiles: how merged factors (scale 1, float32) are laid out in the written adapter.

- `peft`: each module at its own rank; one `r` plus `rank_pattern`/`alpha_pattern` for the rest,
  with alpha equal to rank everywhere so the runtime scale is 1.
- `portable`: what every serving runtime loads (vLLM reads only the global r and alpha, llama.cpp's
  converter one alpha per file): one uniform rank, zero-padded, `lora_alpha == r`, no patterns.
"""

from __future__ import annotations

import torch

from loramix.core.adapters import lora_config

PROFILES = ("peft", "portable")


def pad_rank(A: torch.Tensor, B: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad A (r, in) and B (out, r) to `rank`; B @ A is unchanged."""
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
) -> tuple[dict, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(adapter_config, factors cast to `dtype`) for the chosen profile."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    if profile == "portable":
        rank = max(A.shape[0] for A, _ in factors.values())
        factors = {n: pad_rank(A, B, rank) for n, (A, B) in factors.items()}
    ranks = {n: A.shape[0] for n, (A, _) in factors.items()}
    config = lora_config(template, ranks=ranks, base=base)
    return config, {n: (A.to(dtype), B.to(dtype)) for n, (A, B) in factors.items()}
