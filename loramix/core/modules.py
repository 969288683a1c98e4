"""Where a module sits in a model, read from its path: the one parser for layer index and kind.

    model.layers.3.self_attn.q_proj             -> stack 'model.layers', layer 3, within 'self_attn.q_proj'
    transformer.h.0.attn.c_attn                 -> stack 'transformer.h', layer 0, within 'attn.c_attn'
    encoder.block.2.layer.1.SelfAttention.q     -> layer 2 (the block), within 'layer.1.SelfAttention.q'
    model.layers.0.mlp.experts.5.down_proj      -> layer 0, within 'mlp.experts.5.down_proj'
    lm_head                                     -> no layer, within 'lm_head'

The layer is the first path component that is a whole number: blocks are the outermost numbered
container in every transformers model (numbers further in count sub-layers or experts).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModulePath:
    name: str
    stack: str  # the path before the layer index ('' when the module is in no numbered block)
    layer: int | None
    within: str  # the path after the layer index (the whole name when there is none)

    @property
    def kind(self) -> str:
        """The module's own name: 'q_proj', 'c_attn', 'down_proj', 'lm_head'."""
        return self.name.rsplit(".", 1)[-1]


def parse(name: str) -> ModulePath:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ModulePath(name, ".".join(parts[:i]), int(part), ".".join(parts[i + 1 :]))
    return ModulePath(name, "", None, name)
