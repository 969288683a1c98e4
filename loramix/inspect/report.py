"""What `inspect` reports: an adapter's summary and ‖ΔW‖ grid, or two adapters compared per layer."""

from __future__ import annotations

from typing import Callable

from loramix.core.adapters import WEIGHTS_NAME, Adapter
from loramix.inspect.analysis import SignCounts, cosine, delta_inner, delta_norm, sign_conflicts, split_module

# conventional order of projection names across columns; others follow alphabetically
_COLUMN_ORDER = [
    "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj",
    "query", "key", "value", "c_attn", "c_proj", "c_fc", "dense", "fc1", "fc2", "w1", "w2", "w3",
]


def _column_keys(names: list[str]) -> dict[str, str]:
    """Module name -> column label: the last path component, or the full in-layer path if ambiguous."""
    rests = {n: split_module(n)[1] for n in names}
    by_short: dict[str, set[str]] = {}
    for rest in rests.values():
        by_short.setdefault(rest.rsplit(".", 1)[-1], set()).add(rest)
    return {n: (r.rsplit(".", 1)[-1] if len(by_short[r.rsplit(".", 1)[-1]]) == 1 else r) for n, r in rests.items()}


def _col_rank(label: str) -> tuple[int, str]:
    short = label.rsplit(".", 1)[-1]
    return (_COLUMN_ORDER.index(short) if short in _COLUMN_ORDER else len(_COLUMN_ORDER), label)


def grid(values: dict[str, float | None]) -> dict:
    """Arrange per-module values as layers (rows) × module kinds (columns); None where absent."""
    cols_of = _column_keys(list(values))
    layers = {n: split_module(n)[0] for n in values}
    cols = sorted(set(cols_of.values()), key=_col_rank)
    numbered = sorted({l for l in layers.values() if l is not None})
    rows = [str(l) for l in numbered] + (["-"] if None in layers.values() else [])
    table = [[None] * len(cols) for _ in rows]
    for name, v in values.items():
        layer = layers[name]
        r = rows.index("-" if layer is None else str(layer))
        table[r][cols.index(cols_of[name])] = v
    return {"rows": rows, "cols": cols, "values": table}


def _span(xs: list[float]) -> dict:
    return {"min": min(xs), "max": max(xs)}


def adapter_report(adapter: Adapter) -> dict:
    mods = adapter.modules
    norms = {n: delta_norm(m) for n, m in mods.items()}
    cfg = adapter.config
    g = grid(norms)
    return {
        "path": str(adapter.path),
        "base": adapter.base,
        "modules": len(mods),
        "layers": sum(1 for r in g["rows"] if r != "-"),
        "targets": g["cols"],
        "rank": _span([m.rank for m in mods.values()]),
        "lora_alpha": cfg.get("lora_alpha"),
        "use_rslora": bool(cfg.get("use_rslora")),
        "scale": _span([m.scale for m in mods.values()]),
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "parameters": adapter.num_parameters,
        "size_bytes": (adapter.path / WEIGHTS_NAME).stat().st_size if adapter.path else None,
        "delta_norm": g,
        "module_stats": {
            n: {"rank": m.rank, "scale": m.scale, "shape": list(m.shape), "delta_norm": norms[n]} for n, m in mods.items()
        },
    }


def cat_heatmap(doc: dict) -> dict:
    """fit-cat's α table as a grid: layers (or the one global row) down, adapters across; for
    module granularity, adapter × module kind across. None where an adapter has no module."""
    names = [a["name"] for a in doc["adapters"]]
    if doc["granularity"] != "module":
        return {"rows": list(doc["groups"]), "cols": names, "values": doc["alpha"]}
    grids = [grid({m: row[i] for m, row in zip(doc["groups"], doc["alpha"])}) for i in range(len(names))]
    cols = [f"{name} {col}" for name, g in zip(names, grids) for col in g["cols"]]
    values = [[v for g in grids for v in g["values"][r]] for r in range(len(grids[0]["rows"]))]
    keep = [j for j in range(len(cols)) if any(row[j] is not None for row in values)]  # kinds an adapter has
    return {"rows": grids[0]["rows"], "cols": [cols[j] for j in keep], "values": [[row[j] for j in keep] for row in values]}


def compare_report(a: Adapter, b: Adapter, density: float, on_module: Callable = lambda *_: None) -> dict:
    """Per module and per layer: cosine similarity of the deltas and TIES's sign-conflict rate."""
    shared = sorted(set(a.modules) & set(b.modules))
    per_module, per_layer = {}, {}
    for name in shared:
        ma, mb = a.modules[name], b.modules[name]
        na, nb, inner = delta_norm(ma), delta_norm(mb), delta_inner(ma, mb)
        counts = sign_conflicts(ma, mb, density)
        per_module[name] = {"cosine": cosine(inner, na, nb), "conflict_rate": counts.rate, "norm_a": na, "norm_b": nb}
        layer = split_module(name)[0]
        acc = per_layer.setdefault("-" if layer is None else str(layer), {"inner": 0.0, "na2": 0.0, "nb2": 0.0, "signs": SignCounts()})
        acc["inner"] += inner
        acc["na2"] += na * na
        acc["nb2"] += nb * nb
        acc["signs"].add(counts)
        on_module(name)
    layers = [_layer_row(label, acc) for label, acc in sorted(per_layer.items(), key=lambda kv: _layer_key(kv[0]))]
    total = {"inner": 0.0, "na2": 0.0, "nb2": 0.0, "signs": SignCounts()}
    for acc in per_layer.values():
        for k in ("inner", "na2", "nb2"):
            total[k] += acc[k]
        total["signs"].add(acc["signs"])
    return {
        "a": str(a.path),
        "b": str(b.path),
        "density": density,
        "shared_modules": len(shared),
        "only_in_a": sorted(set(a.modules) - set(b.modules)),
        "only_in_b": sorted(set(b.modules) - set(a.modules)),
        "overall": _layer_row("all", total),
        "layers": layers,
        "cosine": grid({n: v["cosine"] for n, v in per_module.items()}),
        "module_stats": per_module,
    }


def _layer_key(label: str) -> tuple[int, int]:
    return (1, 0) if label == "-" else (0, int(label))


def _layer_row(label: str, acc: dict) -> dict:
    na, nb = acc["na2"] ** 0.5, acc["nb2"] ** 0.5
    return {
        "layer": label,
        "cosine": cosine(acc["inner"], na, nb),
        "conflict_rate": acc["signs"].rate,
        "norm_a": na,
        "norm_b": nb,
    }
