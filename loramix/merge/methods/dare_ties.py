"""dare_ties: DARE's drop and rescale, then TIES's sign election and disjoint merge.

Yu et al. 2023, https://arxiv.org/abs/2311.03099 (with Yadav et al. 2023's merge step).
"""

from __future__ import annotations

from loramix.merge.methods.base import MergeMethod
from loramix.merge.methods.ties import ties_combine

METHOD = MergeMethod(
    name="dare_ties",
    summary="DARE drop and rescale, then TIES sign election and disjoint mean",
    paper="https://arxiv.org/abs/2311.03099",
    options=("density", "majority_sign"),
    combine_deltas=ties_combine,
    trim="random",
    default_density=0.5,
)
