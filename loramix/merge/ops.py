"""Small pure tensor functions shared by the merge methods.

Shapes: k adapters, a block of `rows` rows of a module's (out, in) delta. Everything is float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

BLOCK_ELEMS = 1 << 18  # entries per matrix in one row block: small enough to add little to peak memory


def row_spans(out: int, inp: int) -> list[tuple[int, int]]:
    """Row blocks of an (out, inp) matrix holding about BLOCK_ELEMS entries each."""
    rows = max(1, BLOCK_ELEMS // inp)
    return [(r0, min(r0 + rows, out)) for r0 in range(0, out, rows)]


def kth_largest_abs(chunks: Callable[[], Iterable[torch.Tensor]], k: int) -> float:
    """The k-th largest |x| over all chunks (k >= 1), exactly, without holding them all at once.

    A radix select on the bit patterns of |x|: for non-negative float32 the int32 bit pattern is
    ordered like the value, so two histogram passes over the top 16 and the low 15 magnitude bits
    pin the value down exactly. `chunks()` must yield the same values each time it is called.
    """
    prefix, prefix_bits, remaining = 0, 0, k
    for width in (16, 15):  # 31 magnitude bits; the sign bit of |x| is 0
        shift = 31 - prefix_bits - width
        counts = torch.zeros(1 << width, dtype=torch.int64)
        for chunk in chunks():
            bits = chunk.float().abs().contiguous().view(torch.int32).reshape(-1)
            if prefix_bits:
                bits = bits[(bits >> (31 - prefix_bits)) == prefix]
            counts += torch.bincount((bits >> shift) & ((1 << width) - 1), minlength=1 << width)
        from_top = counts.flip(0).cumsum(0)
        j = int(torch.searchsorted(from_top, torch.tensor([remaining])).item())
        if j >= len(from_top):
            raise ValueError(f"k={k} exceeds the number of values")
        remaining -= int(from_top[j - 1]) if j > 0 else 0
        prefix = (prefix << width) | ((1 << width) - 1 - j)
        prefix_bits += width
    return torch.tensor([prefix], dtype=torch.int32).view(torch.float32).item()


def magnitude_keep(deltas: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Zero, in place, every entry of deltas[i] (k, rows, in) whose magnitude is below thresholds[i]."""
    return deltas.masked_fill_(deltas.abs() < thresholds.view(-1, 1, 1), 0.0)


def random_keep(deltas: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE, in place: drop each entry with probability 1 - density, rescale survivors by 1/density."""
    keep = torch.rand(deltas.shape, generator=generator).lt_(density)  # 1.0 where kept, in place
    return deltas.mul_(keep).div_(density)


def elect_sign(tau: torch.Tensor, majority: str) -> torch.Tensor:
    """TIES sign election over k (dim 0): the sign of the summed values, or of the summed signs."""
    if majority == "total":
        return torch.sign(tau.sum(dim=0))
    if majority == "frequency":
        return torch.sign(torch.sign(tau).sum(dim=0))
    raise ValueError(f"unknown majority sign method {majority!r}")


def disjoint_mean(tau: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Mean over k of the entries whose sign agrees with the elected one (0 where none does)."""
    agree = torch.sign(tau) == sign.unsqueeze(0)
    total = torch.where(agree, tau, 0.0).sum(dim=0)
    count = agree.sum(dim=0).clamp(min=1)
    return total / count


def weighted_sum(tau: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_i weights[i] · tau[i] over dim 0."""
    return torch.tensordot(weights, tau, dims=1)
