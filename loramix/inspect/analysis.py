"""Numbers `inspect` shows, computed from the LoRA factors without forming full deltas where possible.

‖s·B·A‖_F² = s²·tr((BᵀB)(AAᵀ)) and ⟨s·B₁A₁, t·B₂A₂⟩ = s·t·tr((B₁ᵀB₂)(A₂A₁ᵀ)) need only r×r
products. Sign conflicts are entry-wise, so they stream the full deltas in row blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from loramix.core.adapters import LoraModule
from loramix.merge.engine import magnitude_threshold
from loramix.merge.ops import row_spans


def delta_norm(m: LoraModule) -> float:
    A, B = m.A.double(), m.B.double()
    return abs(m.scale) * math.sqrt(max(float(torch.trace((B.T @ B) @ (A @ A.T))), 0.0))


def delta_inner(m1: LoraModule, m2: LoraModule) -> float:
    A1, B1, A2, B2 = m1.A.double(), m1.B.double(), m2.A.double(), m2.B.double()
    return m1.scale * m2.scale * float(torch.trace((B1.T @ B2) @ (A2 @ A1.T)))


def cosine(inner: float, norm1: float, norm2: float) -> float | None:
    if norm1 == 0.0 or norm2 == 0.0:
        return None
    return inner / (norm1 * norm2)


@dataclass
class SignCounts:
    both_kept: int = 0  # entries kept (non-zero after trimming) in both deltas
    conflicts: int = 0  # of those, entries with opposite signs

    def add(self, other: SignCounts) -> None:
        self.both_kept += other.both_kept
        self.conflicts += other.conflicts

    @property
    def rate(self) -> float | None:
        return self.conflicts / self.both_kept if self.both_kept else None


def sign_conflicts(m1: LoraModule, m2: LoraModule, density: float) -> SignCounts:
    """TIES's sign-conflict count: trim each delta to its top-`density` entries, then count the
    entries kept in both whose signs disagree."""
    out, inp = m1.shape
    spans = row_spans(out, inp)
    t1, t2 = (magnitude_threshold(m, density) if density < 1.0 else 0.0 for m in (m1, m2))
    counts = SignCounts()
    for r0, r1 in spans:
        d1, d2 = m1.delta(r0, r1), m2.delta(r0, r1)
        both = (d1.abs() >= t1) & (d2.abs() >= t2) & (d1 != 0) & (d2 != 0)
        counts.both_kept += int(both.sum())
        counts.conflicts += int((both & (torch.sign(d1) != torch.sign(d2))).sum())
    return counts
