"""The merge-method registry: one module per method, each exporting `METHOD`."""

from __future__ import annotations

from loramix.merge.methods import cat, dare_linear, dare_ties, linear, magnitude_prune, svd, ties
from loramix.merge.methods.base import MergeMethod

REGISTRY: dict[str, MergeMethod] = {
    m.METHOD.name: m.METHOD for m in (linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune)
}
