"""The `merge` job: read and check adapters, merge every module, write the result atomically."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from loramix import __version__
from loramix.core.adapters import Adapter, check_compatible, read_adapter, write_adapter
from loramix.core.errors import InputError
from loramix.core.outputs import atomic_dir, check_out


PROVENANCE_NAME = "loramix_merge.json"
MAJORITY_SIGNS = ("total", "frequency")


@contextmanager
def no_progress(description: str, total: int) -> Iterator[Callable[[str], None]]:
    yield lambda *_: None


@dataclass
class MergeRequest:
    adapters: list[Path]
    method: str
    out: Path
    weights: Optional[list[float]] = None
    density: Optional[float] = None
    majority_sign: Optional[str] = None
    rank: Optional[int] = None
    profile: str = "peft"
    into_base: Optional[str] = None
    seed: int = 0
    force: bool = False
    cat_weights: Optional[Path] = None  # fit-cat's α table: one weight per adapter per module


def get_method(name: str):
    from loramix.merge.methods import REGISTRY

    if name not in REGISTRY:
        raise InputError(f"unknown merge method {name!r}", hint=f"choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_request(req: MergeRequest, method) -> None:
    """Refuse options the method does not read and values outside their range (exit 2)."""
    if not req.adapters:
        raise InputError("no adapters given", hint="loramix merge ADAPTER [ADAPTER...] -m METHOD -o OUT")
    if req.weights is not None and len(req.weights) != len(req.adapters):
        raise InputError(f"--weights has {len(req.weights)} values for {len(req.adapters)} adapters")
    for opt, value in (("density", req.density), ("majority_sign", req.majority_sign)):
        if value is not None and opt not in method.options:
            flag = "--" + opt.replace("_", "-")
            raise InputError(f"{method.name} takes no {flag}", hint="see loramix merge --list-methods")
    if req.density is not None and not 0.0 < req.density <= 1.0:
        raise InputError(f"--density must be in (0, 1], got {req.density}")
    if req.majority_sign is not None and req.majority_sign not in MAJORITY_SIGNS:
        raise InputError(f"--majority-sign must be one of {', '.join(MAJORITY_SIGNS)}, got {req.majority_sign!r}")
    if req.rank is not None and req.rank < 1:
        raise InputError(f"--rank must be at least 1, got {req.rank}")
    if req.into_base is not None and (req.rank is not None or req.profile != "peft"):
        raise InputError("--into-base writes full weights; --rank and --profile do not apply")
    inputs = tuple(req.adapters) + ((Path(req.into_base),) if req.into_base and Path(req.into_base).exists() else ())
    if req.cat_weights is not None:
        from loramix.soup.table import table_path

        inputs += (table_path(req.cat_weights),)
    check_out(req.out, req.force, inputs)


def read_cat_weights(req: MergeRequest, method) -> dict | None:
    """--cat-weights: only with -m cat, not with --weights; no adapters given means the table's."""
    from loramix.soup import table

    if req.cat_weights is None:
        return None
    if method.name != "cat":
        raise InputError(f"--cat-weights applies to -m cat, not -m {method.name}")
    if req.weights is not None:
        raise InputError("--weights and --cat-weights both set the weights; give one")
    doc = table.read(req.cat_weights)
    if not req.adapters:
        req.adapters = table.recorded_paths(doc, req.cat_weights)
    return doc


def load_adapters(paths: list[Path]) -> list[Adapter]:
    adapters = [read_adapter(p) for p in paths]
    check_compatible(adapters)
    return adapters


def run_merge(req: MergeRequest, progress: Callable = no_progress) -> dict:
    """Merge as requested and write the output folder; returns the report `--json` prints.

    `progress(description, total)` is a context manager yielding a function called once per module.
    """
    from loramix.merge.engine import MergeOptions, module_names

    method = get_method(req.method)
    table = read_cat_weights(req, method)
    check_request(req, method)
    adapters = load_adapters(req.adapters)
    module_weights = None if table is None else _table_weights(table, req.cat_weights, adapters)
    opts = MergeOptions(
        weights=req.weights or [1.0] * len(adapters),
        density=req.density,
        majority_sign=req.majority_sign or "total",
        rank=req.rank,
        seed=req.seed,
        module_weights=module_weights,
    )
    modules = len(module_names(adapters))
    start = time.perf_counter()
    with atomic_dir(req.out, req.force) as tmp, progress(f"merging ({method.name})", modules) as on_module:
        if req.into_base is not None:
            from loramix.merge.into_base import merge_into_base

            report = merge_into_base(method, adapters, opts, req.into_base, tmp, on_module)
        else:
            report = _write_adapter(method, adapters, opts, req.profile, tmp, on_module)
        report = _report(req, method, adapters, opts, report, time.perf_counter() - start)
        report["modules"] = modules
        (tmp / PROVENANCE_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _table_weights(doc: dict, file: Path, adapters: list[Adapter]) -> dict[str, list[float]]:
    from loramix.soup import table

    table.check_adapters(doc, adapters, file)
    return table.module_weights(doc, adapters, file)


def _write_adapter(method, adapters, opts, profile, folder: Path, on_module) -> dict:
    import torch

    from loramix.merge.engine import merge_to_factors
    from loramix.core.profiles import layout

    merged = merge_to_factors(method, adapters, opts, on_module)
    dtypes = {a.dtype for a in adapters}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    config, factors = layout(merged.factors, profile, adapters[0].config, adapters[0].base, dtype)
    write_adapter(folder, config, factors)
    ranks = [A.shape[0] for A, _ in factors.values()]
    errors = merged.errors
    return {
        "rank": {"min": min(ranks), "max": max(ranks)},
        "error": {"max": max(errors.values()), "mean": sum(errors.values()) / len(errors)},
        "errors": errors,
        "dtype": str(dtype).removeprefix("torch."),
        "warnings": [],
    }


def _report(req: MergeRequest, method, adapters: list[Adapter], opts, body: dict, seconds: float) -> dict:
    return {
        "loramix": __version__,
        "out": str(req.out),
        "method": method.name,
        "kind": method.kind,
        "exact": body["error"]["max"] == 0.0,
        "profile": None if req.into_base else req.profile,
        "into_base": req.into_base,
        "adapters": [{"path": str(a.path), "base": a.base, "sha256": a.sha256()} for a in adapters],
        "weights": None if req.cat_weights else opts.weights,
        "cat_weights": str(req.cat_weights) if req.cat_weights else None,
        "density": method.density(opts.density),
        "majority_sign": opts.majority_sign if "majority_sign" in method.options else None,
        "seed": opts.seed,
        **body,
        "seconds": round(seconds, 3),
    }
