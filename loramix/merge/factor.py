"""Factor a merged delta back into LoRA form: ΔW ≈ B @ A with A (K, in) and B (out, K).

The relative Frobenius error ‖ΔW − B·A‖ / ‖ΔW‖ of each factoring is returned with it. Singular
values are split evenly between the factors (B = U·√S, A = √S·Vᵀ) so both stay well scaled in
half precision. Everything here works in float32 (torch has no half-precision SVD).
"""

from __future__ import annotations

import math

import torch

from loramix.merge.ops import row_spans

# Below this many entries, or when K is close to the smaller side, a full SVD is cheap and exact.
EXACT_SVD_MAX_ELEMS = 1 << 22
OVERSAMPLE = 16
POWER_ITERS = 2


def _split(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    root = S.clamp(min=0).sqrt()
    return Vh * root.unsqueeze(1), U * root.unsqueeze(0)  # A (K, in), B (out, K)


def _rel_err(total_sq: float, kept_sq: float) -> float:
    if total_sq <= 0.0:
        return 0.0
    return math.sqrt(max(total_sq - kept_sq, 0.0) / total_sq)


def truncate_lowrank(A: torch.Tensor, B: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-`rank` approximation of B @ A (A (R, in), B (out, R)) without forming B @ A.

    QR of both factors reduces the problem to an R × R core whose SVD is the SVD of B @ A, so the
    result is the optimal truncation (Eckart–Young) at the cost of a few R-sized products.
    """
    A, B = A.float(), B.float()
    if rank >= A.shape[0]:
        return A, B, 0.0
    Qb, Rb = torch.linalg.qr(B)  # (out, R'), (R', R)
    Qa, Ra = torch.linalg.qr(A.T)  # (in, R''), (R'', R)
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)
    k = min(rank, S.shape[0])
    S2 = S.double() ** 2
    err = _rel_err(float(S2.sum()), float(S2[:k].sum()))
    A_k, B_k = _split(Qb @ U[:, :k], S[:k], Vh[:k] @ Qa.T)
    return A_k, B_k, err


def randomized_svd(M: torch.Tensor, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Top-`rank` SVD of M (n, m) by a randomized range finder with power iterations."""
    q = min(rank + OVERSAMPLE, *M.shape)
    omega = torch.randn(M.shape[1], q, generator=generator)
    Q, _ = torch.linalg.qr(M @ omega)  # (n, q)
    for _ in range(POWER_ITERS):
        Z, _ = torch.linalg.qr(M.T @ Q)  # (m, q)
        Q, _ = torch.linalg.qr(M @ Z)
    Ub, S, Vh = torch.linalg.svd(Q.T @ M, full_matrices=False)  # (q, m) core
    return Q @ Ub[:, :rank], S[:rank], Vh[:rank]


def squared_norm(M: torch.Tensor) -> float:
    """‖M‖_F², each row block's norm in float32 and their sum in float64: no copy of M is made."""
    return sum(float(torch.linalg.vector_norm(M[r0:r1])) ** 2 for r0, r1 in row_spans(*M.shape))


def factor_full(delta: torch.Tensor, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-`rank` factors of a full (out, in) delta and their relative error.

    Small matrices get an exact SVD; large ones a randomized SVD, whose error is measured exactly
    (‖M‖² − Σ s_i² for the kept orthonormal directions) rather than estimated.
    """
    M = delta.float()
    rank = max(1, min(rank, *M.shape))
    if M.numel() <= EXACT_SVD_MAX_ELEMS or 2 * (rank + OVERSAMPLE) >= min(M.shape):
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        S2 = S.double() ** 2  # every singular value: the error is the tail, with no cancellation
        A, B = _split(U[:, :rank], S[:rank], Vh[:rank])
        return A, B, _rel_err(float(S2.sum()), float(S2[:rank].sum()))
    total_sq = squared_norm(M)
    U, S, Vh = randomized_svd(M, rank, torch.Generator().manual_seed(seed))
    A, B = _split(U, S, Vh)
    return A, B, _rel_err(total_sq, float((S.double() ** 2).sum()))
