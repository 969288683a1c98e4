"""linear (task arithmetic): Σ_i w_i · ΔW_i, written exactly as one concatenated LoRA.

Ilharco et al. 2023, "Editing Models with Task Arithmetic", https://arxiv.org/abs/2212.04089.
Stacking the A_i and the scaled B_i gives B_cat @ A_cat = Σ_i w_i s_i B_i A_i with no cross terms
and no SVD: rank Σ r_i, error zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loramix.merge.methods.base import Factors, MergeMethod


def concat_factors(factors: Factors, weights: torch.Tensor | Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    A = torch.cat([a.float() for a, _, _ in factors], dim=0)  # (Σr, in)
    B = torch.cat([float(w) * s * b.float() for (_, b, s), w in zip(factors, weights)], dim=1)  # (out, Σr)
    return A, B


METHOD = MergeMethod(
    name="linear",
    summary="weighted sum of the deltas (task arithmetic), exact by concatenation",
    paper="https://arxiv.org/abs/2212.04089",
    combine_factors=concat_factors,
)
