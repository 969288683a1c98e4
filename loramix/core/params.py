"""LoRAs on parameters rather than modules (PEFT's `target_parameters`): the routed experts of
MoE models that transformers 5 stores as one 3-D tensor per block, (experts, out, in).

PEFT wraps each targeted parameter of a module in a ParamWrapper; two on one module nest, so the
weights of the first (in the module's registration order) sit under `experts.base_layer.lora_A`,
the next under `experts.lora_A`. One wrapper holds every expert's LoRA at once:

    A (r·E, in)    rows e·r + j         -> A_e = A.reshape(E, r, in)[e]       (r, in)
    B (out, r·E)   columns j·E + e      -> B_e = B.reshape(out, r, E)[:, :, e] (out, r)
    ΔW_e = s · B_e @ A_e                   (out, in), added to expert e

where (out, in) are the parameter's last two sizes, or their reverse for modules marked
`is_transposed` (then the parameter is (E, in, out)). loramix reads each expert as a module of
its own, named `<module>.<e>.<parameter>` (model.layers.0.mlp.experts.3.gate_up_proj), so every
merge works on them unchanged, and packs them back this way when writing. Which wrapper is which
parameter, E and the orientation come from the base's architecture, built on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loramix.core.errors import AdapterError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Slot:
    """Where one expert's LoRA lives: the parameter `param` of `module`, expert `expert` of `experts`."""

    module: str  # model.layers.0.mlp.experts
    param: str  # gate_up_proj
    expert: int
    experts: int  # 1 for a 2-D parameter
    transposed: bool  # the parameter is stored (E, in, out)
    order: int  # the parameter's place among the module's own parameters (PEFT nests in this order)

    @property
    def key(self) -> str:
        """The parameter's name in the base's weights."""
        return f"{self.module}.{self.param}"

    @property
    def name(self) -> str:
        """The expert's name as a loramix module."""
        return f"{self.module}.{self.expert}.{self.param}" if self.experts > 1 else self.key


@dataclass(frozen=True)
class Layout:
    """What the base says about one module whose parameters are targeted."""

    params: tuple[tuple[str, tuple[int, ...]], ...]  # its own parameters, in registration order, with shapes
    transposed: bool


def targeted(module: str, layout: Layout, targets: list[str]) -> list[tuple[int, str, tuple[int, ...]]]:
    """(registration index, name, shape) of the module's parameters `targets` names (PEFT's rule:
    the full name, or a suffix after a dot)."""
    out = []
    for i, (param, shape) in enumerate(layout.params):
        key = f"{module}.{param}"
        if any(key == t or key.endswith("." + t) for t in targets):
            out.append((i, param, shape))
    return out


def layouts(base: Path | str, modules: set[str]) -> dict[str, Layout]:
    """The layout of each of `modules` in the base's architecture (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(base)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:
        raise AdapterError(
            f"{base}: its architecture cannot be built ({type(e).__name__}), and the adapters' LoRAs on parameters "
            "can only be read with it",
            hint="pass --base with a local copy of the base model",
        )
    found = {}
    for name in modules:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise AdapterError(f"{base}: has no module {name}, whose parameters the adapter targets")
        params = tuple((p, tuple(t.shape)) for p, t in module.named_parameters(recurse=False))
        found[name] = Layout(params, bool(getattr(module, "is_transposed", False)))
    return found


def split(
    weights: str, key_module: str, A: torch.Tensor, B: torch.Tensor, layout: Layout, module: str, targets: list[str]
) -> tuple[Slot, list[tuple[Slot, torch.Tensor, torch.Tensor]]]:
    """The experts of one wrapper's factors: [(slot, A_e (r, in), B_e (out, r))]. `key_module` is
    the module path in the file (with `.base_layer` once per wrapper around it)."""
    depth = key_module.count(".base_layer")
    params = targeted(module, layout, targets)
    if depth >= len(params):
        raise AdapterError(f"{weights}: {key_module} has no parameter of {module} it could be (it targets {targets})")
    order, param, shape = params[len(params) - 1 - depth]  # the first registered is the innermost
    experts = shape[0] if len(shape) == 3 else 1
    out_f, in_f = (shape[-2:] if not layout.transposed else shape[-1:-3:-1]) if len(shape) == 3 else shape
    slot = Slot(module, param, 0, experts, layout.transposed and len(shape) == 3, order)
    if A.shape[0] % experts or A.shape[1] != in_f or B.shape[0] != out_f or B.shape[1] != A.shape[0]:
        raise AdapterError(
            f"{weights}: {key_module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} do not fit "
            f"{module}.{param} {tuple(shape)}"
        )
    r = A.shape[0] // experts
    As = A.reshape(experts, r, in_f)
    Bs = B.reshape(out_f, r, experts)
    pieces = []
    for e in range(experts):
        s = Slot(module, param, e, experts, slot.transposed, order)
        pieces.append((s, As[e], Bs[:, :, e]))
    return slot, pieces


def pack(pieces: list[tuple[Slot, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One wrapper's A (R·E, in) and B (out, R·E) from its experts' factors (same rank R each), in
    expert order: the inverse of `split`."""
    import torch

    pieces = sorted(pieces, key=lambda p: p[0].expert)
    A = torch.cat([a for _, a, _ in pieces], dim=0)
    B = torch.stack([b for _, _, b in pieces], dim=2).reshape(pieces[0][2].shape[0], -1)
    return A, B


def key_module(slot: Slot, targeted_orders: list[int]) -> str:
    """The module path a wrapper's weights are saved under, given the registration indices of all
    parameters targeted on that module in the written adapter."""
    outer = sum(1 for o in targeted_orders if o > slot.order)
    return slot.module + ".base_layer" * outer


def read(
    weights: str,
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    targets: list[str],
    base: Path | str | None,
    rank_of,
    scale_of,
) -> list[tuple[Slot, torch.Tensor, torch.Tensor, float]]:
    """Every expert's (slot, A_e, B_e, scale) from the wrappers' factors (`pairs`: the module path
    in the file -> (A, B)); rank_of(key, default) and scale_of(key, rank) read the config's rank
    and scale for a parameter's full name."""
    if base is None:
        raise AdapterError(
            f"{weights}: holds LoRAs on parameters ({', '.join(targets)}), which can only be read with the base's "
            "architecture, and its base is not on this machine",
            hint="pass --base with a local copy of the base model",
        )
    modules = {_strip(k) for k in pairs}
    found = layouts(base, modules)
    out = []
    for key_module, (A, B) in sorted(pairs.items()):
        module = _strip(key_module)
        slot, pieces = split(weights, key_module, A, B, found[module], module, targets)
        r = A.shape[0] // slot.experts
        if int(rank_of(slot.key, r)) != r:
            raise AdapterError(f"{weights}: {slot.key} has rank {r}, but the config says {rank_of(slot.key, r)}")
        scale = scale_of(slot.key, r)
        out += [(s, a, b, scale) for s, a, b in pieces]
    return out


def _strip(key_module: str) -> str:
    while key_module.endswith(".base_layer"):
        key_module = key_module.removesuffix(".base_layer")
    return key_module


def owns(key_module: str, targets: list[str]) -> bool:
    """Whether a module path in the file belongs to a wrapper of a targeted parameter."""
    module = _strip(key_module)
    return any(module == t.rpartition(".")[0] or module.endswith("." + t.rpartition(".")[0]) for t in targets)
