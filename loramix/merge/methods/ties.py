"""ties: trim, elect sign, disjoint merge (Yadav et al. 2023, https://arxiv.org/abs/2306.01708).

Per module: keep the top-`density` fraction of each ΔW_i by magnitude, weight it (τ_i = w_i·ΔW_i),
elect a sign per entry (sign of Σ τ_i, or of Σ sign(τ_i) with `frequency`), and average the τ_i
that agree with it. TIES averages where linear sums: with density 1 and no sign conflicts,
ties(w) equals linear(w / k).
"""

from __future__ import annotations

import torch

from loramix.merge.methods.base import MergeMethod
from loramix.merge.ops import disjoint_mean, elect_sign


def ties_combine(deltas: torch.Tensor, weights: torch.Tensor, majority: str) -> torch.Tensor:
    tau = deltas * weights.view(-1, 1, 1)  # (k, rows, in)
    return disjoint_mean(tau, elect_sign(tau, majority))


METHOD = MergeMethod(
    name="ties",
    summary="trim to top-density magnitudes, elect a sign per entry, average the agreeing entries",
    paper="https://arxiv.org/abs/2306.01708",
    options=("density", "majority_sign"),
    combine_deltas=ties_combine,
    trim="magnitude",
    default_density=0.2,
)
