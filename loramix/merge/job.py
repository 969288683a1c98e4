"""The `merge` job: read and check adapters, merge every module, write the result atomically."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from loramix import __version__
from loramix.core.adapters import Adapter, check_compatible, read_adapter
from loramix.core.errors import InputError
from loramix.core.outputs import atomic_dir, check_out
from loramix.core.profiles import write_adapter
from loramix.merge.report import InputAdapter, MergeReport, Span

ModuleWeights = Callable[[list[Adapter]], dict[str, list[float]]]

PROVENANCE_NAME = "loramix_merge.json"


class MajoritySign(str, Enum):
    """TIES's sign election: the sign of the summed values (total) or of the summed signs (frequency)."""

    total = "total"
    frequency = "frequency"


MAJORITY_SIGNS = tuple(m.value for m in MajoritySign)


@contextmanager
def no_progress(description: str, total: int) -> Iterator[Callable[[str], None]]:
    yield lambda *_: None


@dataclass
class MergeRequest:
    adapters: list[Path]
    method: str
    out: Path
    weights: list[float] | None = None
    density: float | None = None
    majority_sign: str | None = None
    rank: int | None = None
    profile: str = "peft"
    into_base: str | None = None
    seed: int = 0
    force: bool = False
    cat_weights: Path | None = None  # the α table `per_module` weights come from (see run_merge)


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
    inputs += (Path(req.cat_weights),) if req.cat_weights is not None else ()
    check_out(req.out, req.force, inputs)


def load_adapters(paths: list[Path]) -> list[Adapter]:
    adapters = [read_adapter(p) for p in paths]
    check_compatible(adapters)
    return adapters


def run_merge(
    req: MergeRequest, progress: Callable = no_progress, per_module: ModuleWeights | None = None
) -> MergeReport:
    """Merge as requested and write the output folder; returns the report (`--json` prints it).

    `progress(description, total)` is a context manager yielding a function called once per module.
    `per_module(adapters)`, if given, sets one weight per adapter for each module instead of
    --weights (an α table: loramix.soup.rebuild).
    """
    from loramix.merge.engine import MergeOptions, module_names

    method = get_method(req.method)
    check_request(req, method)
    adapters = load_adapters(req.adapters)
    opts = MergeOptions(
        weights=req.weights or [1.0] * len(adapters),
        density=req.density,
        majority_sign=req.majority_sign or "total",
        rank=req.rank,
        seed=req.seed,
        module_weights=None if per_module is None else per_module(adapters),
    )
    report = _report(req, method, adapters, opts, len(module_names(adapters)))
    start = time.perf_counter()
    with atomic_dir(req.out, req.force) as tmp, progress(f"merging ({method.name})", report.modules) as on_module:
        if req.into_base is not None:
            from loramix.merge.into_base import merge_into_base

            report.base, report.warnings = merge_into_base(method, adapters, opts, req.into_base, tmp, on_module)
        else:
            _write_adapter(method, adapters, opts, req.profile, tmp, on_module, report)
        report.seconds = round(time.perf_counter() - start, 3)
        (tmp / PROVENANCE_NAME).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def _write_adapter(method, adapters, opts, profile, folder: Path, on_module, report: MergeReport) -> None:
    """Merge, factor and write the adapter; fills in the report's rank, errors and dtype."""
    import torch

    from loramix.core.profiles import layout
    from loramix.merge.engine import merge_to_factors

    merged = merge_to_factors(method, adapters, opts, on_module)
    dtypes = {a.dtype for a in adapters}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    config, factors = layout(merged.factors, profile, adapters[0].config, adapters[0].base, dtype)
    write_adapter(folder, config, factors)
    errors = merged.errors
    report.rank = Span.of([A.shape[0] for A, _ in factors.values()])
    report.errors = errors
    report.error_max, report.error_mean = max(errors.values()), sum(errors.values()) / len(errors)
    report.dtype = str(dtype).removeprefix("torch.")


def _report(req: MergeRequest, method, adapters: list[Adapter], opts, modules: int) -> MergeReport:
    return MergeReport(
        version=__version__,
        out=str(req.out),
        method=method.name,
        kind=method.kind,
        profile=None if req.into_base else req.profile,
        into_base=req.into_base,
        adapters=[InputAdapter(str(a.path), a.base, a.sha256()) for a in adapters],
        weights=None if req.cat_weights else opts.weights,
        cat_weights=str(req.cat_weights) if req.cat_weights else None,
        density=method.density(opts.density),
        majority_sign=opts.majority_sign if "majority_sign" in method.options else None,
        seed=opts.seed,
        error_max=0.0,
        error_mean=0.0,
        modules=modules,
    )
