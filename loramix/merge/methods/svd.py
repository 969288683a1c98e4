"""svd: the weighted sum of the deltas, re-factored to `--rank` by an exact truncated SVD.

Eckart–Young: the truncation is the best rank-K approximation of Σ_i w_i ΔW_i in Frobenius norm.
It is computed from the concatenated factors (QR of each, SVD of a Σr × Σr core), never from the
full matrix. Default rank: the largest input rank (PEFT's `svd` default).
"""

from __future__ import annotations

from loramix.merge.methods.base import MergeMethod
from loramix.merge.methods.linear import concat_factors

METHOD = MergeMethod(
    name="svd",
    summary="weighted sum re-factored to --rank (default: the largest input rank) by exact truncated SVD",
    paper="https://doi.org/10.1007/BF02288367",
    combine_factors=concat_factors,
    default_rank="max",
)
