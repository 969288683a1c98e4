"""magnitude_prune: keep the top-`density` entries of each ΔW_i by magnitude, then sum.

The trimming step of TIES (Yadav et al. 2023, https://arxiv.org/abs/2306.01708) without the
sign election: Σ_i w_i · trim(ΔW_i).
"""

from __future__ import annotations

from loramix.merge.methods.base import MergeMethod
from loramix.merge.methods.dare_linear import sum_combine

METHOD = MergeMethod(
    name="magnitude_prune",
    summary="keep each delta's top-density entries by magnitude, weighted sum",
    paper="https://arxiv.org/abs/2306.01708",
    options=("density",),
    combine_deltas=sum_combine,
    trim="magnitude",
    default_density=0.2,
)
