"""What a merge method is: a name, its paper, the options it reads, and one pure function.

Two kinds of method exist:
- *factor* methods combine the LoRA factors exactly (a concatenation: rank Σ r_i, no error);
- *delta* methods combine full (out, in) deltas entry by entry (trimming, dropping, sign election);
  the engine feeds them row blocks of the stacked deltas and factors the result back by SVD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# (A_i (r_i, in), B_i (out, r_i), scale_i) for each adapter that has the module
Factors = list[tuple[torch.Tensor, torch.Tensor, float]]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    summary: str
    paper: str
    options: tuple[str, ...] = ()  # merge options it reads besides --weights and --rank
    # factor kind: (factors, weights (k,)) -> (A (R, in), B (out, R)), ΔW = B @ A exactly
    combine_factors: Callable[[Factors, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    # delta kind: (deltas (k, rows, in) after trimming, weights (k,), majority) -> (rows, in)
    combine_deltas: Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor] | None = None
    trim: str | None = None  # "magnitude" or "random": how the engine sparsifies each delta first
    default_density: float | None = None
    default_rank: str = "sum"  # "sum" of the inputs' ranks, or "max" of them

    @property
    def kind(self) -> str:
        """exact (a concatenation), truncated (optimal SVD of the exact sum) or factored (full-rank
        deltas factored back by SVD)."""
        if self.combine_factors is None:
            return "factored"
        return "truncated" if self.default_rank == "max" else "exact"

    def density(self, given: float | None) -> float | None:
        """The density this method uses: the one given, its default, or None if it takes none."""
        if "density" not in self.options:
            return None
        return given if given is not None else self.default_density
