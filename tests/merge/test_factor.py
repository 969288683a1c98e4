"""Factoring merged deltas back to LoRA form: optimal truncations, exact errors, streaming."""

from __future__ import annotations

import pytest
import torch

from loramix.merge import factor, ops
from loramix.merge.engine import MergeOptions, merge_module
from loramix.merge.factor import factor_full, truncate_lowrank
from loramix.merge.methods import REGISTRY
from loramix.merge.ops import kth_largest_abs
from tests.merge.builders import random_adapter


def optimal_error(M: torch.Tensor, k: int) -> float:
    s = torch.linalg.svdvals(M.double())
    return float((s[k:] ** 2).sum().sqrt() / (s**2).sum().sqrt())


def test_lowrank_truncation_is_the_optimal_one():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(9, 40, generator=g), torch.randn(30, 9, generator=g)
    for k in (1, 4, 8):
        Ak, Bk, err = truncate_lowrank(A, B, k)
        M = B @ A
        assert Ak.shape == (k, 40) and Bk.shape == (30, k)
        assert abs(err - optimal_error(M, k)) < 1e-5
        assert abs(float((M - Bk @ Ak).norm() / M.norm()) - err) < 1e-4


def test_lowrank_truncation_at_full_rank_is_exact():
    A, B = torch.randn(5, 20), torch.randn(10, 5)
    Ak, Bk, err = truncate_lowrank(A, B, 5)
    assert err == 0.0 and torch.allclose(Bk @ Ak, B @ A, atol=1e-5)


def test_exact_svd_path_is_optimal():
    M = torch.randn(50, 40, generator=torch.Generator().manual_seed(1))
    _A, _B, err = factor_full(M, 7)
    assert abs(err - optimal_error(M, 7)) < 1e-5


def test_randomized_svd_error_within_one_percent_of_optimal(monkeypatch):
    """A TIES-like matrix (low-rank part plus sparse residue), forced through the randomized path."""
    monkeypatch.setattr(factor, "EXACT_SVD_MAX_ELEMS", 0)
    g = torch.Generator().manual_seed(2)
    low = torch.randn(600, 24, generator=g) @ torch.randn(24, 500, generator=g)
    M = low * (torch.rand(600, 500, generator=g) < 0.4)
    for k in (16, 48):
        A, B, err = factor_full(M, k, seed=0)
        opt = optimal_error(M, k)
        true = float((M - B @ A).norm() / M.norm())
        assert abs(err - true) < 1e-3  # the reported error is measured, not guessed
        assert err <= 1.01 * opt, (err, opt)


@pytest.mark.parametrize("n,k", [(10, 1), (10, 10), (1000, 1), (1000, 300), (5000, 4999)])
def test_kth_largest_abs_is_exact(n, k):
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(n, generator=g)
    x[: n // 10] = 0.0
    x[n // 10 : n // 5] = 0.25  # ties
    want = x.abs().sort(descending=True).values[k - 1].item()
    got = kth_largest_abs(lambda: iter(x.split(max(1, n // 7))), k)
    assert got == want


@pytest.mark.parametrize("method", ["ties", "dare_ties", "magnitude_prune", "dare_linear"])
def test_block_size_does_not_change_the_result(method, monkeypatch):
    adapters = [random_adapter(30, rank=3, shapes={"m": (40, 16)}), random_adapter(31, rank=2, shapes={"m": (40, 16)})]
    opts = MergeOptions(weights=[1.0, 0.7], density=0.35, seed=5)
    whole = merge_module(REGISTRY[method], adapters, opts, "m").delta()
    monkeypatch.setattr(ops, "BLOCK_ELEMS", 16 * 3)  # three rows per block
    blocked = merge_module(REGISTRY[method], adapters, opts, "m").delta()
    assert torch.allclose(whole, blocked, atol=1e-6)
