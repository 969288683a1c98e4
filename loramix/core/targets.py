"""Which modules of a base model a LoRA can target: its linear projections (nn.Linear, 4-bit
Linear4bit, GPT-2's Conv1D), named by their last path component (q_proj, down_proj, ...)."""

from __future__ import annotations

from loramix.core.errors import InputError

SKIP = ("lm_head", "embed_tokens", "wte", "wpe", "embed_out", "score")


def linear_modules(model) -> dict[str, tuple[int, int]]:
    """{full module name: (in_features, out_features)} for every projection a LoRA can wrap."""
    import torch
    from transformers.pytorch_utils import Conv1D

    found = {}
    for name, module in model.named_modules():
        if name.split(".")[-1] in SKIP:
            continue
        if isinstance(module, torch.nn.Linear):  # bitsandbytes' Linear4bit is one too
            found[name] = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            found[name] = (module.weight.shape[0], module.weight.shape[1])
    return found


def resolve_targets(model, targets: list[str] | None, rank: int) -> list[str]:
    """The short names to wrap: `targets` checked against the model, or all of its projections.

    Refuses a name that matches no module (listing those that exist) and a rank larger than a
    targeted module's smaller side (a LoRA of that rank would not be low-rank).
    """
    modules = linear_modules(model)
    available = sorted({n.split(".")[-1] for n in modules})
    if not available:
        raise InputError("the base model has no linear projections a LoRA can target")
    chosen = available if targets is None else list(dict.fromkeys(targets))
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
                hint=f"use --rank {min(fan_in, fan_out)} or less",
            )
    return chosen


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a target_modules entry: the full name, or a suffix after a dot."""
    return name == target or name.endswith("." + target)


def check_adapter_shapes(model, adapters) -> None:
    """Every adapter module must be a linear projection of the same (out, in) shape in the base."""
    shapes = {name: (fan_out, fan_in) for name, (fan_in, fan_out) in linear_modules(model).items()}
    for a in adapters:
        for name, m in a.modules.items():
            if name not in shapes:
                raise InputError(f"{a.path}: targets {name}, which is not a linear module of the base model")
            if shapes[name] != m.shape:
                raise InputError(
                    f"{a.path}: {name} is {m.shape[0]}x{m.shape[1]}, the base's is {shapes[name][0]}x{shapes[name][1]}"
                )
