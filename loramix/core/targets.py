"""Which modules of a base model a LoRA can target: its linear projections (nn.Linear, 4-bit
Linear4bit, GPT-2's Conv1D), named by their last path component (q_proj, down_proj, ...)."""

from __future__ import annotations

from pathlib import Path

from loramix.core.errors import InputError

SKIP = ("lm_head", "embed_tokens", "wte", "wpe", "embed_out", "score")
# routers and gates that choose experts: left out of the default targets
ROUTERS = ("gate", "router", "shared_expert_gate", "switch")


def linear_modules(model, skip: tuple[str, ...] = SKIP) -> dict[str, tuple[int, int]]:
    """{full module name: (in_features, out_features)} for every projection a LoRA can wrap
    (leaving out, by default, the output head and embeddings: train-skill does not target them)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    found = {}
    for name, module in model.named_modules():
        if name.split(".")[-1] in skip:
            continue
        if isinstance(module, torch.nn.Linear):  # bitsandbytes' Linear4bit is one too
            found[name] = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            found[name] = (module.weight.shape[0], module.weight.shape[1])
    return found


def resolve_targets(model, targets: list[str] | None, rank: int, params: list[str] | None = None) -> list[str]:
    """The names to wrap: `targets` checked against the model, or by default its projections.

    The default leaves out routers and gates that pick experts (a LoRA on a 1-output gate is not
    low-rank) and any projection smaller than the rank, and says what it left out, 3-D expert
    parameters included. Explicit targets are refused if one matches no module (the modules that
    exist are listed) or is smaller than the rank. `params` (3-D expert parameters to train too)
    must each name one of the model's parameters.
    """
    _check_params(model, params or [])
    modules = linear_modules(model)
    available = sorted({n.split(".")[-1] for n in modules})
    if not available:
        raise InputError("the base model has no linear projections a LoRA can target")
    if targets is None:
        return _default_targets(model, modules, rank, trained_params=bool(params))
    chosen = list(dict.fromkeys(targets))
    if not chosen:
        raise InputError("--targets names no module", hint=f"modules that exist: {','.join(available)}")
    excluded = [t for t in chosen if t.split(".")[-1] in SKIP]
    if excluded:
        raise InputError(
            f"--targets {','.join(excluded)}: embeddings and the output head are not LoRA targets here",
            hint=f"choose among {','.join(available)}",
        )
    missing = [t for t in chosen if not any(_matches(name, t) for name in modules)]
    if missing:
        raise InputError(
            f"--targets {','.join(missing)}: no such module in the base model",
            hint=f"modules that exist: {','.join(available)}",
        )
    for name, (fan_in, fan_out) in modules.items():
        if any(_matches(name, t) for t in chosen) and rank > min(fan_in, fan_out):
            raise InputError(
                f"--rank {rank}: larger than {name} ({fan_out}x{fan_in}) allows",
                hint=f"use --rank {min(fan_in, fan_out)} or less, or leave {name.split('.')[-1]} out of --targets",
            )
    return chosen


def _default_targets(model, modules: dict[str, tuple[int, int]], rank: int, trained_params: bool) -> list[str]:
    from loramix.core import log

    kinds: dict[str, list[tuple[int, int]]] = {}
    for name, shape in modules.items():
        kinds.setdefault(name.split(".")[-1], []).append(shape)
    routers = sorted(k for k in kinds if k in ROUTERS)
    small = sorted(k for k, shapes in kinds.items() if k not in ROUTERS and rank > min(min(s) for s in shapes))
    chosen = sorted(k for k in kinds if k not in ROUTERS and k not in small)
    if not chosen:
        raise InputError(
            f"--rank {rank}: larger than every projection of the base model allows",
            hint=f"use --rank {max(min(s) for shapes in kinds.values() for s in shapes)} or less",
        )
    if routers:
        log.note(f"targets: left out the expert routers and gates {', '.join(routers)}")
    if small:
        log.warn(f"targets: left out {', '.join(small)}, smaller than --rank {rank}")
    experts = expert_parameters(model)
    if experts and not trained_params:
        kinds_3d = sorted({_param_kind(n) for n in experts})
        log.warn(
            f"targets: the routed experts are 3-D parameters ({', '.join(kinds_3d)} in {len(experts)} places), not "
            "linear modules; they are not trained (--target-parameters trains LoRAs on them)"
        )
    return chosen


def _check_params(model, params: list[str]) -> None:
    names = expert_parameters(model)
    for p in params:
        if not any(n == p or n.endswith("." + p) for n in names):
            kinds = sorted({_param_kind(n) for n in names})
            raise InputError(
                f"--target-parameters {p}: no such 3-D parameter in the base model",
                hint=f"parameters that exist: {', '.join(kinds)}" if kinds else "this base has no expert parameters",
            )


def expert_parameters(model) -> list[str]:
    """The names of the model's 3-D parameters (routed experts stored as one tensor, transformers 5)."""
    return [name for name, p in model.named_parameters() if p.dim() == 3]


def _param_kind(name: str) -> str:
    """'model.layers.0.mlp.experts.gate_up_proj' -> 'mlp.experts.gate_up_proj' (the path in a block)."""
    from loramix.core.modules import parse

    return parse(name).within


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a target_modules entry: the full name, or a suffix after a dot."""
    return name == target or name.endswith("." + target)


def check_adapter_shapes(model, adapters) -> None:
    """Every adapter module must be a linear projection of the same (out, in) shape in the base
    (the output head included: other trainers target it), and the copies of base weights adapters
    hold must be the base's."""
    from loramix.core.compat import check_base_copies

    shapes = {name: (fan_out, fan_in) for name, (fan_in, fan_out) in linear_modules(model, skip=()).items()}
    check_base_copies(adapters, lambda name: _plain_weight(model, name), "the loaded base")
    for a in adapters:
        for name, m in a.modules.items():
            if m.slot is not None:  # an expert of a 3-D parameter: read against the base's architecture
                continue
            if name not in shapes:
                raise InputError(f"{a.path}: targets {name}, which is not a linear module of the base model")
            if shapes[name] != m.shape:
                raise InputError(
                    f"{a.path}: {name} is {m.shape[0]}x{m.shape[1]}, the base's is {shapes[name][0]}x{shapes[name][1]}"
                )


def conv1d_modules(base: Path) -> set[str] | None:
    """The names of the base's Conv1D modules (GPT-2 style: weight stored as (in, out)), read from
    its architecture built on the meta device (no weights are loaded); None if it cannot be built."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        config = AutoConfig.from_pretrained(base)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # a model that needs its own code, an unknown architecture
        return None
    return {name for name, module in model.named_modules() if isinstance(module, Conv1D)}


def stored_transposed(base: Path, shapes: dict[str, tuple[int, int]], stored: dict[str, list[int]]) -> dict[str, bool]:
    """For each module (name -> the delta's (out, in)), whether the base stores its weight as
    (in, out). The base's own modules decide, not an adapter's fan_in_fan_out flag (which depends on
    how the base was loaded when the adapter was trained: 4-bit loading turns Conv1D into Linear).
    Without the architecture, the stored shape decides; a square one cannot, and is refused."""
    conv1d = conv1d_modules(base)
    out = {}
    for name, (fan_out, fan_in) in shapes.items():
        if conv1d is not None:
            out[name] = name in conv1d
        elif fan_out == fan_in:
            raise InputError(
                f"{name}: cannot tell whether {base} stores this {fan_out}x{fan_in} weight as (out, in) or (in, out)",
                hint="the base's architecture could not be built from its config.json; merge into a base transformers "
                "knows, or write an adapter instead of --into-base",
            )
        else:
            out[name] = stored.get(name) == [fan_in, fan_out]
    return out


def _plain_weight(model, name: str):
    """The weight of module `name` of a loaded model, or None where there is nothing to compare
    (no such module, or 4-bit weights)."""
    import torch

    try:
        weight = model.get_submodule(name).weight
    except AttributeError:
        return None
    return weight if isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point else None
