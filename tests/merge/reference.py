"""Straightforward reference implementations on full matrices, written independently of loramix."""

from __future__ import annotations

import torch


def trim_topk(delta: torch.Tensor, density: float) -> torch.Tensor:
    k = int(density * delta.numel())
    flat = delta.flatten()
    out = torch.zeros_like(flat)
    if k > 0:
        idx = flat.abs().topk(k).indices
        out[idx] = flat[idx]
    return out.view_as(delta)


def ties(deltas: list[torch.Tensor], weights: list[float], density: float, majority: str = "total") -> torch.Tensor:
    taus = [w * trim_topk(d, density) for d, w in zip(deltas, weights)]
    out = torch.zeros_like(taus[0])
    for idx in range(out.numel()):
        vals = [t.view(-1)[idx].item() for t in taus]
        if majority == "total":
            s = sum(vals)
        else:
            s = sum((v > 0) - (v < 0) for v in vals)
        sign = (s > 0) - (s < 0)
        agree = [v for v in vals if sign != 0 and ((v > 0) - (v < 0)) == sign]
        out.view(-1)[idx] = sum(agree) / len(agree) if agree else 0.0
    return out


def magnitude_prune(deltas, weights, density):
    return sum(w * trim_topk(d, density) for d, w in zip(deltas, weights))


def dare_linear(deltas, weights, density, masks):
    return sum(w * torch.where(m, d / density, 0.0) for d, w, m in zip(deltas, weights, masks))


def dare_ties(deltas, weights, density, masks, majority="total"):
    dropped = [torch.where(m, d / density, 0.0) for d, m in zip(deltas, masks)]
    return ties(dropped, weights, 1.0, majority)
