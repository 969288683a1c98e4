"""The `merge` job: read and check adapters, merge every module, write the result atomically."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from loramix import __version__
from loramix.core.adapters import Adapter, read_adapter
from loramix.core.compat import check_compatible
from loramix.core.errors import InputError
from loramix.core.models import base_record, local_folder, same_base
from loramix.core.outputs import atomic_dir, check_out, refuse_inputs
from loramix.core.profiles import write_adapter
from loramix.merge.report import InputAdapter, MergeReport, Span

if TYPE_CHECKING:
    import torch

    from loramix.merge.into_base import BaseWeights

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
    base: str | None = None  # the base the adapters are for (--base): shapes and saved copies are checked


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
        numbers = [str(a) for a in req.adapters if _is_number(str(a)) and not Path(a).exists()]
        hint = f"--weights takes its values comma-separated, e.g. --weights 1,{numbers[0]}" if numbers else None
        n = len(req.weights)
        raise InputError(f"--weights has {n} value{'s' * (n != 1)} for {len(req.adapters)} adapters", hint=hint)
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
    if req.base is not None and req.into_base is not None and not same_base(req.base, req.into_base):
        raise InputError(f"--base {req.base} and --into-base {req.into_base} name different models; give one")
    bases = [local_folder(b) for b in (req.base, req.into_base) if b is not None]
    inputs = tuple(req.adapters) + tuple(b for b in bases if b is not None)
    inputs += (Path(req.cat_weights),) if req.cat_weights is not None else ()
    check_out(req.out, req.force, inputs)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_adapters(paths: list[Path], base: str | None = None) -> tuple[list[Adapter], list[str]]:
    """The adapters, checked against each other (and `base`), and what the user should know."""
    adapters = [read_adapter(p, base=base) for p in paths]
    warnings = check_compatible(adapters, base)
    if len(adapters) == 1:
        warnings.append(f"one adapter given: the result is {adapters[0].path} itself, reshaped by the method")
    digests: dict[str | None, Path | None] = {}
    for a in adapters:
        digest = a.sha256()
        if digest in digests:
            warnings.append(f"{a.path} and {digests[digest]} hold the same weights: that adapter counts twice")
        digests.setdefault(digest, a.path)
    return adapters, warnings


def check_base(adapters: list[Adapter], name: str | None, out: Path) -> BaseWeights | None:
    """With a base named (--base, --into-base): every module's shape against its weights, and the
    copies of base weights the adapters hold against them. DoRA modules and modules_to_save need the
    base (their deltas are computed against it): without a name, the one the adapters record, if it
    is on this machine. Returns the base's weights, or None (and says that copies go unchecked)."""
    from loramix.core import log
    from loramix.core.compat import check_base_copies
    from loramix.merge.into_base import BaseWeights

    needs = [a for a in adapters if a.saved or any(m.magnitude is not None for m in a.modules.values())]
    if name is None and needs:
        if local_folder(needs[0].base) is None:
            raise InputError(
                f"{needs[0].path}: its DoRA modules or modules_to_save are merged as deltas against the base's "
                f"weights, and its base {needs[0].base!r} is not on this machine",
                hint="pass --base with a local copy of the base model",
            )
        name = needs[0].base
    if name is None:
        for a in adapters:
            if a.base_copies:
                log.note(
                    f"{a.path}: holds copies of the base's {', '.join(a.base_copies)}; they are left out "
                    "(--base BASE checks them against the base)"
                )
        return None
    weights = BaseWeights(name)
    refuse_inputs(out, [weights.folder], "--out")  # the folder a hub name resolved to, too
    weights.check_modules(adapters)
    check_base_copies(adapters, weights.tensor, str(weights.folder))
    for a in adapters:
        for module_name, m in a.modules.items():
            if m.magnitude is not None:
                m.base_rows = weights.rows(module_name)
    return weights


def merge_saved(adapters: list[Adapter], opts, base: BaseWeights | None) -> dict[str, dict[str, torch.Tensor]]:
    """Each module_to_save merged: W0 + Σ w_i (M_i − W0) per tensor (loramix.core.dense)."""
    from loramix.core.dense import merged_saved

    names = sorted({n for a in adapters for n in a.saved})
    if not names:
        return {}
    assert base is not None  # check_base found one
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name in names:
        weights = opts.module_weights.get(name, opts.weights) if opts.module_weights else opts.weights
        for param in sorted({p for a in adapters for p in a.saved.get(name, {})}):
            w0 = base.tensor(name, param)
            if w0 is None:
                raise InputError(f"{name}.{param}: a module_to_save the base {base.folder} has no tensor for")
            copies = [(a.saved.get(name, {}).get(param), w) for a, w in zip(adapters, weights)]
            out.setdefault(name, {})[param] = merged_saved(copies, w0)
    return out


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
    adapters, warnings = load_adapters(req.adapters, req.base or req.into_base)
    base = check_base(adapters, req.base or req.into_base, req.out)
    opts = MergeOptions(
        weights=req.weights or [1.0] * len(adapters),
        density=req.density,
        majority_sign=req.majority_sign or "total",
        rank=req.rank,
        seed=req.seed,
        module_weights=None if per_module is None else per_module(adapters),
    )
    report = _report(req, method, adapters, opts, len(module_names(adapters)))
    saved = merge_saved(adapters, opts, base)
    report.warnings = warnings + _dense_notes(adapters, saved, req)
    start = time.perf_counter()
    with atomic_dir(req.out, req.force) as tmp, progress(f"merging ({method.name})", report.modules) as on_module:
        if req.into_base is not None:
            from loramix.merge.into_base import merge_into_base

            report.base = merge_into_base(method, adapters, opts, req.into_base, tmp, on_module, saved)
        else:
            _write_adapter(method, adapters, opts, req, tmp, on_module, report, saved)
        report.seconds = round(time.perf_counter() - start, 3)
        (tmp / PROVENANCE_NAME).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def _dense_notes(adapters: list[Adapter], saved: dict, req: MergeRequest) -> list[str]:
    notes = []
    if any(m.magnitude is not None for a in adapters for m in a.modules.values()) and req.into_base is None:
        notes.append(
            "DoRA modules are merged through their exact deltas against the base and written as LoRA "
            "factors by SVD (the rel. error says how close); --into-base writes them exactly"
        )
    if saved:
        notes.append(
            f"modules_to_save ({', '.join(saved)}): merged as the weighted sum of their deltas against "
            "the base, exactly"
        )
    return notes


def _write_adapter(
    method, adapters, opts, req: MergeRequest, folder: Path, on_module, report: MergeReport, saved: dict
) -> None:
    """Merge, factor and write the adapter; fills in the report's rank, errors and dtype."""
    import torch

    from loramix.core.profiles import layout
    from loramix.merge.engine import merge_to_factors

    merged = merge_to_factors(method, adapters, opts, on_module)
    dtypes = {a.dtype for a in adapters}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    base = base_record(req.base) if req.base is not None else adapters[0].base
    slots = {n: m.slot for a in adapters for n, m in a.modules.items() if m.slot is not None}
    config, factors = layout(merged.factors, req.profile, adapters[0].config, base, dtype, slots, list(saved))
    write_adapter(folder, config, factors, {f"{n}.{p}": t for n, params in saved.items() for p, t in params.items()})
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
