"""Which of an adapter's stored modules PEFT would load: those its config targets.

PEFT builds LoRA layers only where `target_modules` (a list: a module's full name or a suffix after
a dot; a string: a regular expression the whole name must match), `layers_to_transform` /
`layers_pattern` and `exclude_modules` say, and ignores saved weights for any other module. merge
and inspect read every stored weight; so an adapter whose config leaves some of them out would mean
one thing to eval (through PEFT) and another to merge. Such an adapter is refused everywhere.
"""

from __future__ import annotations

import re

ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output head
_HEADS = ("lm_head", "embed_out", "output")


def loaded(config: dict, name: str) -> bool:
    """Whether PEFT, loading an adapter with `config`, would put a LoRA on module `name`."""
    if _excluded(config.get("exclude_modules"), name):
        return False
    saved = config.get("modules_to_save") or []
    if any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", name) for m in saved):
        return False
    targets = config.get("target_modules")
    if targets is None:
        return False
    if targets == ALL_LINEAR:
        return name.rsplit(".", 1)[-1] not in _HEADS
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    if not any(name.endswith("." + t) for t in targets):
        return False
    return _in_layers(config, name)


def _excluded(exclude, name: str) -> bool:
    if not exclude:
        return False
    if isinstance(exclude, str):
        return re.fullmatch(exclude, name) is not None
    return name in exclude or any(name.endswith("." + e) for e in exclude)


def _in_layers(config: dict, name: str) -> bool:
    """layers_to_transform: the module's layer (its first numbered segment, under layers_pattern
    when one is given) must be one of them."""
    layers = config.get("layers_to_transform")
    if layers is None or (isinstance(layers, list) and not layers):
        return True
    patterns = config.get("layers_pattern")
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == layers if isinstance(layers, int) else index in layers


def unloaded(config: dict, names: list[str]) -> list[str]:
    """The stored modules PEFT would leave out."""
    return [n for n in names if not loaded(config, n)]
