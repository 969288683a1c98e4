"""fit-cat's α table (`cat_weights.json`) read back: checked, matched to its adapters, and turned
into one weight per adapter per module for `merge -m cat --cat-weights FILE`.

The table holds α per group (layer, module, "all", or a module's rank slot "MODULE#j") and
adapter, null where an adapter has no module in the group. With `--param softmax` a group's α is
the softmax over the adapters present in the group; a module that some of them lack shares α among
the ones it has, which is the group's α renormalised over them (a softmax restricted to a subset is
the renormalised softmax). A rank-slot table weighs each adapter's j-th rank-1 component
s·b_j·a_jᵀ of a module on its own: its rebuild scales column j of each B_i by the slot's α (the
softmax shares are already those among the adapters that have the slot) and merges with weight 1.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path

from loramix.core import jsontext
from loramix.core.errors import InputError
from loramix.core.modules import parse

TABLE_NAME = "cat_weights.json"
SLOT_MARK = "#"  # a rank-slot group's label: MODULE#j


class Granularity(str, Enum):
    """One α per adapter per layer (the paper's choice), per module (its released code), one overall,
    or one per rank-1 component of each adapter's module (rank)."""

    layer = "layer"
    module = "module"
    global_ = "global"
    rank = "rank"


class Param(str, Enum):
    """free: α itself is trained; softmax: logits whose softmax over the adapters is α."""

    free = "free"
    softmax = "softmax"


class Method(str, Enum):
    """cat: α per module by gradient (LoRA Soups); tuned-cat: cat, then the merged adapter's A and B
    trained on the same sample; lorahub: one weight per adapter by CMA-ES; moe: a learned token
    router per module; arrow: a data-free token router per module."""

    cat = "cat"
    tuned_cat = "tuned-cat"
    lorahub = "lorahub"
    moe = "moe"
    arrow = "arrow"


METHODS = tuple(m.value for m in Method)


GRANULARITIES = tuple(g.value for g in Granularity)
PARAMS = tuple(p.value for p in Param)
_KEYS = ("granularity", "param", "groups", "alpha", "adapters")


def table_path(path: Path) -> Path:
    """A fit-cat output folder or its cat_weights.json -> the JSON file."""
    path = Path(path)
    return path / TABLE_NAME if path.is_dir() else path


def read(path: Path) -> dict:
    """The α table, refused with its file name if it is not one."""
    file = table_path(path)
    if not file.is_file():
        raise InputError(f"{file}: no such file", hint="give a fit-cat output folder or its cat_weights.json")
    try:
        doc = jsontext.loads(file.read_text(encoding="utf-8"), str(file))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{file}: not valid JSON ({e})")
    if not isinstance(doc, dict) or doc.get("command") != "fit-cat" or any(k not in doc for k in _KEYS):
        raise InputError(f"{file}: not a fit-cat α table", hint="loramix fit-cat writes one as cat_weights.json")
    _check_adapters(doc, file)
    _check_alpha(doc, file)
    return doc


def _check_adapters(doc: dict, file: Path) -> None:
    entries = doc["adapters"]
    if not isinstance(entries, list) or len(entries) < 2:
        raise InputError(f'{file}: "adapters" must list the two or more adapters the table weights')
    for i, a in enumerate(entries, 1):
        if not isinstance(a, dict) or any(not isinstance(a.get(k), str) for k in ("name", "path", "sha256")):
            raise InputError(f'{file}: adapter {i} needs "name", "path" and "sha256" strings')
    if not isinstance(doc["groups"], list) or not all(isinstance(g, str) for g in doc["groups"]):
        raise InputError(f'{file}: "groups" must be a list of group names')


def _check_alpha(doc: dict, file: Path) -> None:
    k, alpha = len(doc["adapters"]), doc["alpha"]
    if doc["granularity"] not in GRANULARITIES or doc["param"] not in PARAMS:
        raise InputError(f"{file}: unknown granularity {doc['granularity']!r} or param {doc['param']!r}")
    if not isinstance(alpha, list) or len(alpha) != len(doc["groups"]):
        rows = len(alpha) if isinstance(alpha, list) else "no list of"
        raise InputError(f"{file}: alpha has {rows} rows for {len(doc['groups'])} groups")
    for label, row in zip(doc["groups"], alpha):
        if not isinstance(row, list) or len(row) != k:
            raise InputError(f"{file}: group {label}: needs {k} values, one per adapter")
        for v in row:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise InputError(f"{file}: group {label}: {v!r} is not a finite number")


def recorded_paths(doc: dict, file: Path) -> list[Path]:
    """The adapters the table was fitted with, where they were; refused if one is gone."""
    paths = [Path(a["path"]) for a in doc["adapters"]]
    for p in paths:
        if not p.is_dir():
            raise InputError(
                f"{table_path(file)}: its adapter {p} is gone", hint="give the adapters on the command line"
            )
    return paths


def check_adapters(doc: dict, adapters: list, file: Path) -> None:
    """The adapters must be the table's, in its order (matched by the sha256 of their weights)."""
    file = table_path(file)
    expected = [a["sha256"] for a in doc["adapters"]]
    if len(adapters) != len(expected):
        raise InputError(f"{file}: was fitted with {len(expected)} adapters, got {len(adapters)}")
    for i, a in enumerate(adapters):
        digest = a.sha256()
        if digest == expected[i]:
            continue
        names = ", ".join(x["name"] for x in doc["adapters"])
        if digest in expected:
            raise InputError(
                f"{a.path}: is the table's adapter {expected.index(digest) + 1}, given as {i + 1}",
                hint=f"give them in the table's order: {names}",
            )
        raise InputError(
            f"{a.path}: is not an adapter {file.name} was fitted with (its weights differ)",
            hint=f"the table's adapters: {names}",
        )


def layer_of(module: str) -> int:
    """The block index in a module path: 'model.layers.3.mlp.up_proj' -> 3 (loramix.core.modules)."""
    layer = parse(module).layer
    if layer is None:
        raise InputError(
            f"{module}: no layer index in its name, so it has no per-layer α", hint="use --granularity module or global"
        )
    return layer


def groups(
    modules: list[str], granularity: str, ranks: dict[str, int] | None = None
) -> tuple[list[str], dict[str, int]]:
    """(group labels, module -> group index) for the chosen granularity. With "rank" a module owns
    ranks[module] consecutive groups, one per rank slot j ("MODULE#j"), and maps to the first."""
    if granularity == "rank":
        if ranks is None:
            raise ValueError("granularity 'rank' needs each module's largest rank")
        labels: list[str] = []
        first: dict[str, int] = {}
        for m in modules:
            first[m] = len(labels)
            labels += [f"{m}{SLOT_MARK}{j}" for j in range(ranks[m])]
        return labels, first
    if granularity == "global":
        return ["all"], dict.fromkeys(modules, 0)
    if granularity == "module":
        return list(modules), {m: i for i, m in enumerate(modules)}
    layers = sorted({layer_of(m) for m in modules})
    index = {layer: i for i, layer in enumerate(layers)}
    return [str(layer) for layer in layers], {m: index[layer_of(m)] for m in modules}


def group_label(module: str, granularity: str) -> str:
    """The group a module's α belongs to: its layer index, itself, or "all"."""
    if granularity == "global":
        return "all"
    return module if granularity == "module" else str(layer_of(module))


def scale_slots(doc: dict, adapters: list, file: Path) -> dict[str, list[float]]:
    """A rank-slot table applied to the loaded `adapters` in place: column j of each module's B
    scaled by α[MODULE#j, adapter]. Returns the weights that then merge them exactly: 1 per adapter
    that has the module, 0 where it lacks it."""
    import torch

    index = {label: g for g, label in enumerate(doc["groups"])}
    names = sorted({n for a in adapters for n in a.modules})
    out = {}
    for name in names:
        for i, a in enumerate(adapters):
            m = a.modules.get(name)
            if m is None:
                continue
            column = []
            for j in range(m.rank):
                g = index.get(f"{name}{SLOT_MARK}{j}")
                v = None if g is None else doc["alpha"][g][i]
                if v is None:
                    raise InputError(f"{table_path(file)}: has no α for slot {j} of {name} in adapter {i + 1}")
                column.append(float(v))
            m.B = m.B.float() * torch.tensor(column)
        out[name] = [1.0 if name in a.modules else 0.0 for a in adapters]
    return out


def module_weights(doc: dict, adapters: list, file: Path) -> dict[str, list[float]]:
    """{module: weight per adapter (0 where it lacks the module)} from the table."""
    index = {label: g for g, label in enumerate(doc["groups"])}
    names = sorted({n for a in adapters for n in a.modules})
    out = {}
    for name in names:
        label = group_label(name, doc["granularity"])
        if label not in index:
            raise InputError(f"{table_path(file)}: has no α for {name} (group {label})")
        row = doc["alpha"][index[label]]
        has = [name in a.modules for a in adapters]
        if any(h and v is None for h, v in zip(has, row)):
            raise InputError(f"{table_path(file)}: group {label} has no α for an adapter with {name}")
        weights = [float(v) if h else 0.0 for h, v in zip(has, row)]
        if doc["param"] == "softmax":  # shares: renormalised over the adapters this module has
            total = sum(weights)
            if not total > 0:
                raise InputError(f"{table_path(file)}: group {label}: softmax shares must be positive for {name}")
            weights = [w / total for w in weights]
        out[name] = weights
    return out
