"""The merge methods' names, without importing them (torch): for the command line's choices.
The registry (loramix.merge.methods.REGISTRY) holds exactly these, in this order (a test checks)."""

from __future__ import annotations

from enum import Enum


class MethodName(str, Enum):
    linear = "linear"
    cat = "cat"
    svd = "svd"
    ties = "ties"
    dare_linear = "dare_linear"
    dare_ties = "dare_ties"
    magnitude_prune = "magnitude_prune"
