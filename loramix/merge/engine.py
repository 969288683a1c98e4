"""Run a merge method over every module of k adapters, one module at a time.

Delta methods stream: each adapter's delta is recomputed in row blocks of about 2^18
entries (s_i · B_i[rows] @ A_i), so the only full-size matrix alive is the merged delta itself.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from loramix.core.adapters import Adapter, LoraModule
from loramix.merge.factor import factor_full, truncate_lowrank
from loramix.merge.methods.base import MergeMethod
from loramix.merge.ops import kth_largest_abs, magnitude_keep, random_keep, row_spans, weighted_sum


@dataclass
class MergeOptions:
    weights: list[float]
    density: float | None = None
    majority_sign: str = "total"
    rank: int | None = None
    seed: int = 0
    module_weights: dict[str, list[float]] | None = None  # per module, overriding `weights` (--cat-weights)

    def weights_for(self, name: str) -> list[float]:
        return self.module_weights[name] if self.module_weights is not None else self.weights


@dataclass
class ModuleMerge:
    """The merged delta of one module: exact low-rank factors, or a full (out, in) matrix."""

    name: str
    ranks: list[int]  # the ranks of the inputs that have this module
    A: torch.Tensor | None = None  # (R, in)
    B: torch.Tensor | None = None  # (out, R)
    full: torch.Tensor | None = None  # (out, in)

    def delta(self) -> torch.Tensor:
        if self.full is not None:
            return self.full
        assert self.A is not None and self.B is not None
        return self.B @ self.A


@dataclass
class MergedFactors:
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)


def module_names(adapters: list[Adapter]) -> list[str]:
    names: set[str] = set()
    for a in adapters:
        names.update(a.modules)
    return sorted(names)


def merge_modules(method: MergeMethod, adapters: list[Adapter], opts: MergeOptions) -> Iterator[ModuleMerge]:
    """Yield the merged delta of each module in turn."""
    for name in module_names(adapters):
        yield merge_module(method, adapters, opts, name)


def merge_module(method: MergeMethod, adapters: list[Adapter], opts: MergeOptions, name: str) -> ModuleMerge:
    """The merged delta of one module (an adapter that lacks the module adds nothing to it)."""
    present = [(a.modules[name], w) for a, w in zip(adapters, opts.weights_for(name)) if name in a.modules]
    mods = [m for m, _ in present]
    weights = torch.tensor([w for _, w in present], dtype=torch.float32)
    ranks = [m.rank for m in mods]
    dense = any(m.magnitude is not None for m in mods)  # DoRA: no factors to combine, only its delta
    if method.combine_factors is not None and not dense:
        A, B = method.combine_factors([(m.A, m.B, m.scale) for m in mods], weights)
        return ModuleMerge(name, ranks, A=A, B=B)
    return ModuleMerge(name, ranks, full=merged_delta(method, mods, weights, opts, name))


def merged_delta(
    method: MergeMethod, mods: list[LoraModule], weights: torch.Tensor, opts: MergeOptions, name: str
) -> torch.Tensor:
    """The full merged delta of one module for a delta method (or of a factor method's sum, where a
    DoRA module has no factors to combine), built block by block."""
    out, inp = mods[0].shape
    spans = row_spans(out, inp)
    density = method.density(opts.density) or 1.0
    combine = method.combine_deltas or _weighted
    thresholds = None
    if method.trim == "magnitude":
        thresholds = torch.tensor([magnitude_threshold(m, density) for m in mods])
    # one generator per adapter, drawn row block by row block: the drops do not depend on the block size
    gens = [torch.Generator().manual_seed(module_seed(opts.seed, f"{name}#{i}")) for i in range(len(mods))]
    result = torch.empty(out, inp)
    for r0, r1 in spans:
        blocks = [m.delta(r0, r1) for m in mods]  # k × (rows, in)
        if method.trim == "random":
            blocks = [random_keep(d, density, g) for d, g in zip(blocks, gens)]
        deltas = torch.stack(blocks)
        if thresholds is not None:
            deltas = magnitude_keep(deltas, thresholds)
        result[r0:r1] = combine(deltas, weights, opts.majority_sign)
    return result


def _weighted(deltas: torch.Tensor, weights: torch.Tensor, majority: str) -> torch.Tensor:
    return weighted_sum(deltas, weights)


def magnitude_threshold(mod: LoraModule, density: float) -> float:
    """The magnitude at or above which the top `density` fraction of mod's delta entries lie."""
    out, inp = mod.shape
    keep = int(density * out * inp)
    if keep <= 0:
        return float("inf")
    spans = row_spans(out, inp)
    return kth_largest_abs(lambda: (mod.delta(r0, r1) for r0, r1 in spans), keep)


def module_seed(seed: int, name: str) -> int:
    """A per-module seed that does not depend on which other modules are merged, or in what order."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def target_rank(method: MergeMethod, merged: ModuleMerge, rank: int | None) -> int:
    if rank is not None:
        return rank
    return max(merged.ranks) if method.default_rank == "max" else sum(merged.ranks)


def factor_module(method: MergeMethod, merged: ModuleMerge, rank: int | None, seed: int = 0):
    """(A, B, relative error) of one merged module at the requested rank, float32, scale 1."""
    k = target_rank(method, merged, rank)
    if merged.full is None:
        assert merged.A is not None and merged.B is not None
        return truncate_lowrank(merged.A, merged.B, k)
    return factor_full(merged.full, k, seed=module_seed(seed, merged.name))


def merge_to_factors(
    method: MergeMethod,
    adapters: list[Adapter],
    opts: MergeOptions,
    on_module: Callable[[str], None] | None = None,
) -> MergedFactors:
    """Merge every module and factor it to LoRA form; `on_module` is called after each one."""
    result = MergedFactors()
    for merged in merge_modules(method, adapters, opts):
        A, B, err = factor_module(method, merged, opts.rank, opts.seed)
        result.factors[merged.name] = (A, B)
        result.errors[merged.name] = err
        if on_module:
            on_module(merged.name)
        del merged  # the next module's full delta must not coexist with this one
    return result
