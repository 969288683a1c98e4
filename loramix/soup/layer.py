"""CAT, LoRA Soups' learnable concatenation: frozen skill LoRAs, one learned weight α per adapter
per layer (or per module, or one overall), folded into one ordinary adapter at the end.

During fitting every wrapped linear runs one concatenated low-rank product instead of k adapter
passes (shapes for k adapters of ranks r_i, R = Σ r_i):

    h = x · A_catᵀ                 (..., R)      A_cat = stack(A_i)        (R, in)
    h = h ⊙ (α[row, owner] · s)    (..., R)      owner: adapter of each rank slot, s: its scale
    y = base(x) + h · B_catᵀ       (..., out)    B_cat = concat(B_i)       (out, R)

so W = W0 + Σ_i α_i^(group) · s_i · B_i · A_i exactly (docs/architecture.md, CAT). `row` is the
module's group for every slot, except with granularity "rank", where slot j of each adapter has a
row of its own: W = W0 + Σ_i Σ_j α_ij · s_i · b_ij · a_ijᵀ, still one adapter of rank R.
"""

from __future__ import annotations

import torch
from torch import nn

from loramix.soup.table import GRANULARITIES, PARAMS, groups


class CatAlpha(nn.Module):
    """The only trainable tensor: (groups, k) weights, free or a softmax over adapters."""

    def __init__(self, n_groups: int, k: int, param: str = "free", init: float = 1.0):
        super().__init__()
        if param not in PARAMS:
            raise ValueError(f"param must be one of {PARAMS}, not {param!r}")
        self.param = param
        start = torch.full((n_groups, k), float(init)) if param == "free" else torch.zeros(n_groups, k)
        self.raw = nn.Parameter(start)

    def forward(self, present: torch.Tensor | None = None) -> torch.Tensor:
        return alpha_values(self.raw, self.param, present)


def alpha_values(raw: torch.Tensor, param: str, present: torch.Tensor | None = None) -> torch.Tensor:
    """α (groups, k) from the trained tensor: raw itself, or a softmax over the adapters that are
    `present` (a (k,) or (groups, k) bool mask: where an adapter lacks a module, or a rank slot, the
    others share all of α)."""
    if param == "free":
        return raw
    if present is not None:
        raw = raw.masked_fill(~present, float("-inf"))
    return torch.softmax(raw, dim=-1)


class CatLinear(nn.Module):
    """A frozen base linear plus the concatenated skill LoRAs, weighted by α[group]."""

    def __init__(
        self,
        base: nn.Module,
        A: torch.Tensor,
        B: torch.Tensor,
        scale: torch.Tensor,
        owner: torch.Tensor,
        alpha: CatAlpha,
        row: torch.Tensor,
        present: torch.Tensor,
    ):
        super().__init__()
        self.base, self.alpha = base, [alpha]  # a list: α is owned by the model once
        self.register_buffer("present", present)  # (k,), or (groups, k) for "rank": which adapters have it
        self.register_buffer("row", row)  # (R,) the α row of each rank slot
        self.register_buffer("A", A)  # (R, in)
        self.register_buffer("B", B)  # (out, R)
        self.register_buffer("scale", scale)  # (R,)
        self.register_buffer("owner", owner)  # (R,) adapter index of each rank slot

    present: torch.Tensor
    row: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    scale: torch.Tensor
    owner: torch.Tensor

    tuned: bool = False  # after unfreeze(): A and B are trained, α·s is folded into B

    def coef(self) -> torch.Tensor:
        """(R,) α of each rank slot (its row, its adapter) times its scale."""
        return self.alpha[0](self.present)[self.row, self.owner] * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = nn.functional.linear(x.to(self.A.dtype), self.A)
        if not self.tuned:
            h = h * self.coef()
        return y + nn.functional.linear(h, self.B).to(y.dtype)

    def unfreeze(self) -> None:
        """Fold α·s into B and make A and B trainable: the output is unchanged, α is fixed from now."""
        with torch.no_grad():
            A, B = self.A.clone(), self.B * self.coef()
        del self.A, self.B
        self.A, self.B = nn.Parameter(A), nn.Parameter(B)
        self.tuned = True


def concatenate(modules: list, device=None, dtype=torch.float32):
    """(A_cat, B_cat, scale, owner) from one LoraModule (or None) per adapter."""
    present = [(i, m) for i, m in enumerate(modules) if m is not None]
    A = torch.cat([m.A.to(device, dtype) for _, m in present])
    B = torch.cat([m.B.to(device, dtype) for _, m in present], dim=1)
    scale = torch.cat([torch.full((m.rank,), float(m.scale)) for _, m in present]).to(device, dtype)
    owner = torch.cat([torch.full((m.rank,), i, dtype=torch.long) for i, m in present]).to(device)
    return A, B, scale, owner


def present_mask(modules: list) -> torch.Tensor:
    return torch.tensor([m is not None for m in modules])


def slot_rows(modules: list, first: int, per_slot: bool) -> torch.Tensor:
    """(R,) the α row of each rank slot of concatenate(modules): the module's group `first`, or with
    per_slot (granularity "rank") first + j for an adapter's j-th slot."""
    present = [m for m in modules if m is not None]
    if not per_slot:
        return torch.full((sum(m.rank for m in present),), first, dtype=torch.long)
    return torch.cat([first + torch.arange(m.rank) for m in present])


def slot_presence(adapters: list, group: dict[str, int], n_groups: int) -> torch.Tensor:
    """(n_groups, k) bool for granularity "rank": row group[module] + j marks the adapters with a
    j-th slot in that module (every row has one: a module has as many rows as its largest rank)."""
    mask = torch.zeros(n_groups, len(adapters), dtype=torch.bool)
    for name, first in group.items():
        for i, a in enumerate(adapters):
            if name in a.modules:
                mask[first : first + a.modules[name].rank, i] = True
    return mask


def fold(modules: list, alpha_row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One module's merged factors: A = stack(A_i), B = concat(α_i · s_i · B_i) (exact): the
    linear merge's concatenation with α as the weights."""
    from loramix.merge.methods.linear import concat_factors

    weights = alpha_row.detach().float().tolist()
    present = [(m.A, m.B, m.scale, weights[i]) for i, m in enumerate(modules) if m is not None]
    return concat_factors([(a, b, s) for a, b, s, _ in present], [w for *_, w in present])


def fold_slots(modules: list, values: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A rank-slot module's merged factors: A = stack(A_i), B's column of adapter i's slot j scaled by
    α[first + j, i] · s_i (exact)."""
    A, B, scale, owner = concatenate(modules)
    coef = values.detach().float()[slot_rows(modules, first, True), owner] * scale
    return A, B * coef


def largest_ranks(adapters: list, names: list[str]) -> dict[str, int]:
    return {n: max(a.modules[n].rank for a in adapters if n in a.modules) for n in names}


def wrap(
    model: nn.Module, adapters: list, granularity: str = "layer", param: str = "free", init: float = 1.0
) -> tuple[CatAlpha, list[str], dict[str, int]]:
    """Replace every linear any adapter targets by a CatLinear sharing one CatAlpha (registered on
    the model as `cat_alpha`); freeze everything else. Returns (α, group labels, module -> group:
    with granularity "rank", the row of its slot 0)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    names = sorted({name for a in adapters for name in a.modules})
    per_slot = granularity == "rank"
    labels, group = groups(names, granularity, largest_ranks(adapters, names) if per_slot else None)
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    alpha = CatAlpha(len(labels), len(adapters), param, init).to(device)
    model.cat_alpha = alpha
    slots = slot_presence(adapters, group, len(labels)).to(device) if per_slot else None  # shared by all
    for name in names:
        parent, _, child = name.rpartition(".")
        base = model.get_submodule(name)
        modules = [a.modules.get(name) for a in adapters]
        A, B, scale, owner = concatenate(modules, device=device)
        present = slots if slots is not None else present_mask(modules).to(device)
        rows = slot_rows(modules, group[name], per_slot)
        setattr(
            model.get_submodule(parent) if parent else model,
            child,
            CatLinear(base, A, B, scale, owner, alpha, rows.to(device), present),
        )
    return alpha, labels, group


def unfreeze(model: nn.Module) -> None:
    """Tuning after CAT: every CatLinear's A and B become trainable with α·s folded into B."""
    for m in model.modules():
        if isinstance(m, CatLinear):
            m.unfreeze()
    alpha = getattr(model, "cat_alpha", None)
    if alpha is not None:
        alpha.raw.requires_grad_(False)


def live_factors(model: nn.Module) -> dict[str, tuple]:
    """{module: (A, B)} (scale 1, float32) of every CatLinear as it is now (α·s folded into B)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, CatLinear):
            B = m.B if m.tuned else m.B * m.coef()
            out[name] = (m.A.detach().float().cpu(), B.detach().float().cpu())
    return out


def folded_factors(
    adapters: list, raw: torch.Tensor, param: str, group: dict[str, int], granularity: str = "module"
) -> dict[str, tuple]:
    """{module: (A, B)} of the merged adapter (scale 1, float32): α·s folded into B, rank Σ r_i."""
    if granularity == "rank":
        values = alpha_values(raw, param, slot_presence(adapters, group, len(raw)))
        return {name: fold_slots([a.modules.get(name) for a in adapters], values, g) for name, g in group.items()}
    out = {}
    for name, g in group.items():
        modules = [a.modules.get(name) for a in adapters]
        out[name] = fold(modules, alpha_values(raw, param, present_mask(modules))[g])
    return out


def group_table(
    adapters: list, raw: torch.Tensor, param: str, group: dict[str, int], granularity: str = "module"
) -> list[list]:
    """α per group and adapter for reports; None where an adapter has no module (or rank slot) in
    the group (with softmax, the share among the adapters present in the group)."""
    n_groups, k = raw.shape
    if granularity == "rank":
        present = slot_presence(adapters, group, n_groups)
    else:
        present = torch.zeros(n_groups, k, dtype=torch.bool)
        for name, g in group.items():
            present[g] |= present_mask([a.modules.get(name) for a in adapters])
    rows = []
    for g in range(n_groups):
        values = alpha_values(raw[g : g + 1], param, present[g])[0].tolist()
        rows.append([v if present[g, i] else None for i, v in enumerate(values)])
    return rows
