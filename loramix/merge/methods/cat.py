"""cat: PEFT's `combination_type="cat"`, one static weight per adapter, exact concatenation.

Numerically the same as `linear`; it exists under PEFT's name so that scripts written against
`add_weighted_adapter(..., combination_type="cat")` find their method. Not to be confused with
LoRA Soups' CAT (https://arxiv.org/abs/2410.13025), which *learns* a weight per adapter per layer:
that is `loramix fit-cat`.
"""

from __future__ import annotations

from loramix.merge.methods.base import MergeMethod
from loramix.merge.methods.linear import concat_factors

METHOD = MergeMethod(
    name="cat",
    summary="PEFT-compatible static concatenation (one weight per adapter), exact",
    paper="https://arxiv.org/abs/2410.13025",
    combine_factors=concat_factors,
)
