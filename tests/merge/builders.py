"""In-memory adapters for merge tests: no files, exact control over A, B and scale."""

from __future__ import annotations

import torch

from loramix.core.adapters import Adapter, LoraModule

SHAPES = {"layers.0.q": (12, 10), "layers.0.up": (16, 10), "layers.1.q": (12, 10)}


def random_adapter(seed: int, rank: int = 3, scale: float = 2.0, shapes=SHAPES, name: str = "x") -> Adapter:
    g = torch.Generator().manual_seed(seed)
    modules = {
        n: LoraModule(A=torch.randn(rank, i, generator=g), B=torch.randn(o, rank, generator=g), scale=scale)
        for n, (o, i) in shapes.items()
    }
    return Adapter(
        path=None, config={"base_model_name_or_path": "base", "r": rank, "lora_alpha": scale * rank}, modules=modules
    )


def scaled_twin(adapter: Adapter, factor: float) -> Adapter:
    """The same adapter with every delta multiplied by `factor` (via B)."""
    mods = {n: LoraModule(A=m.A.clone(), B=m.B * factor, scale=m.scale) for n, m in adapter.modules.items()}
    return Adapter(path=None, config=dict(adapter.config), modules=mods)
