"""dare_linear: drop and rescale, then sum (Yu et al. 2023, https://arxiv.org/abs/2311.03099).

Each entry of each ΔW_i is dropped with probability 1 − density and the survivors are scaled by
1/density (so the expectation is unchanged); the results are summed with the weights. `--seed`
fixes the drops.
"""

from __future__ import annotations

import torch

from loramix.merge.methods.base import MergeMethod
from loramix.merge.ops import weighted_sum


def sum_combine(deltas: torch.Tensor, weights: torch.Tensor, majority: str) -> torch.Tensor:
    return weighted_sum(deltas, weights)


METHOD = MergeMethod(
    name="dare_linear",
    summary="drop entries with probability 1-density, rescale by 1/density, weighted sum",
    paper="https://arxiv.org/abs/2311.03099",
    options=("density",),
    combine_deltas=sum_combine,
    trim="random",
    default_density=0.5,
)
