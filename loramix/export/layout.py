"""How llama.cpp names and lays out a base model's weights, from the base's config.json.

A LoRA GGUF names each pair after the base tensor it changes (`blk.3.attn_q.weight.lora_a`), so
the exporter needs llama.cpp's name for every module an adapter wraps, the shape that module has
in the base (to refuse an adapter made for another base), and one quirk of Llama-family
conversions: llama.cpp stores the rows of q_proj and k_proj in another order than transformers
(see `rope_order`), so the rows of a LoRA's B on them must be reordered the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loramix.core import jsontext
from loramix.core.errors import AdapterError, InputError
from loramix.core.modules import parse


@dataclass(frozen=True)
class Family:
    """A transformers model_type llama.cpp converts: its GGUF architecture, and whether its
    converter reorders the rows of q_proj and k_proj (Llama's does, to interleave RoPE pairs)."""

    model_type: str
    architecture: str
    reorders_qk: bool


# Only families whose export has been checked against llama.cpp itself (bench/llama_cpp.py).
FAMILIES = {f.model_type: f for f in (Family("llama", "llama", reorders_qk=True),)}

# a module's path within a block (model.layers.N.<within>) -> llama.cpp's tensor in block N
BLOCK_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
BLOCK_STACK = "model.layers"
OUTPUT_HEAD = "lm_head"  # llama.cpp's "output"


@dataclass(frozen=True)
class BaseLayout:
    """The facts of one base that decide names and shapes, read from its config.json."""

    config: Path
    family: Family
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_head: bool  # lm_head shares the embedding's weight: llama.cpp has no separate output tensor

    def shape(self, within: str) -> tuple[int, int]:
        """(out, in) of the base weight a module changes ('self_attn.q_proj', ..., 'lm_head')."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "self_attn.q_proj": (q, self.hidden),
            "self_attn.k_proj": (kv, self.hidden),
            "self_attn.v_proj": (kv, self.hidden),
            "self_attn.o_proj": (self.hidden, q),
            "mlp.gate_proj": (self.intermediate, self.hidden),
            "mlp.up_proj": (self.intermediate, self.hidden),
            "mlp.down_proj": (self.hidden, self.intermediate),
            OUTPUT_HEAD: (self.vocab, self.hidden),
        }[within]

    def heads_of(self, within: str) -> int | None:
        """How many heads llama.cpp reorders the rows of this module's B by (None: left as is)."""
        if not self.family.reorders_qk:
            return None
        return {"self_attn.q_proj": self.heads, "self_attn.k_proj": self.kv_heads}.get(within)


def read_layout(config_path: Path) -> BaseLayout:
    """The layout of the base whose config.json is `config_path`; a family llama.cpp is not known
    to load LoRAs for the same way is refused, naming it."""
    try:
        config = jsontext.loads(config_path.read_text(encoding="utf-8"), str(config_path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{config_path}: cannot be read as a model config ({e})")
    if not isinstance(config, dict):
        raise InputError(f"{config_path}: expected a JSON object")
    family = FAMILIES.get(str(config.get("model_type")))
    if family is None:
        raise InputError(
            f"{config_path}: the base is a {config.get('model_type')!r} model; export gguf writes LoRAs for "
            f"{', '.join(sorted(FAMILIES))} bases only",
            hint="other families are refused until their export is checked against llama.cpp",
        )
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return BaseLayout(
            config=config_path,
            family=family,
            layers=int(config["num_hidden_layers"]),
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab=int(config["vocab_size"]),
            tied_head=bool(config.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise InputError(f"{config_path}: has no {e.args[0]}, which a {family.model_type} config holds")
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise InputError(f"{config_path}: a size in it is not a positive whole number ({e})")


def tensor_name(layout: BaseLayout, module: str, where: Path | None) -> str:
    """llama.cpp's name of the base tensor `module` (model.layers.3.self_attn.q_proj) changes,
    `blk.3.attn_q.weight`; a module llama.cpp has no tensor for is refused."""
    path = parse(module)
    if path.layer is None and module == OUTPUT_HEAD:
        if layout.tied_head:
            raise AdapterError(
                f"{where}: has a LoRA on lm_head, which this base ties to its embeddings ({layout.config}); "
                "llama.cpp keeps no separate output weight to apply it to"
            )
        return "output.weight"
    if path.stack != BLOCK_STACK or path.within not in BLOCK_TENSORS:
        raise AdapterError(
            f"{where}: module {module} has no tensor in llama.cpp's {layout.family.architecture} models",
            hint=f"export gguf writes LoRAs on {', '.join(k.rsplit('.', 1)[1] for k in BLOCK_TENSORS)} and lm_head",
        )
    assert path.layer is not None
    if path.layer >= layout.layers:
        raise AdapterError(
            f"{where}: module {module} is in layer {path.layer}, but the base has {layout.layers} "
            f"layers ({layout.config})",
            hint="the adapter was trained on another base; pass --base with that base's folder",
        )
    return f"blk.{path.layer}.{BLOCK_TENSORS[path.within]}.weight"


def within(module: str) -> str:
    """The module's kind as BaseLayout.shape takes it: its path within its block, or lm_head."""
    return parse(module).within


def rope_order(rows: int, heads: int) -> list[int]:
    """The order in which llama.cpp stores the rows of a Llama q_proj (or k_proj) weight.

    transformers keeps the two halves of each head's rotary pairs apart (rows x_0..x_{d/2-1} then
    y_0..y_{d/2-1}, rotated by rotate_half); llama.cpp's converter interleaves them
    (x_0, y_0, x_1, y_1, ...). Row k of the stored weight is row order[k] of transformers'.
    Reordering the rows of B alone is enough for a LoRA: P·(B·A) = (P·B)·A.
    """
    dim = rows // heads
    if dim * heads != rows or dim % 2:
        raise InputError(f"{rows} rows do not split into {heads} heads of an even size")
    half = dim // 2
    return [head * dim + side * half + j for head in range(heads) for j in range(half) for side in (0, 1)]
