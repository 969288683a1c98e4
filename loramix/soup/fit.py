"""fit-cat's configuration, checks and preparation (the adapters, the data sample, the base
wrapped with CAT's layer or another method's), the loop step that keeps the best validation, and
the output: one merged adapter plus the α table (cat_weights.json and cat_weights.safetensors).

The runs themselves live beside it: CAT and tuned-cat in soup/cat_run.py, lorahub in soup/hub.py,
moe and arrow (a routed mixture instead of an adapter) in soup/route.py; soup/job.py dispatches."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramix.core import dist
from loramix.core.errors import EXIT_INTERRUPTED, InputError, LoramixError
from loramix.soup import layer
from loramix.soup.report import DataSample, FitReport, SkillAdapter
from loramix.soup.table import METHODS, TABLE_NAME
from loramix.train import loop

TENSOR_NAME = "cat_weights.safetensors"


# α is a few numbers trained for a few dozen steps (1e-2 barely moves it); a router is a matrix
DEFAULT_LR = {"cat": 0.1, "tuned-cat": 0.1, "moe": 1e-3}  # lorahub and arrow use no gradient
# more passes over the sample overfit CAT's α (compose.md) and help the routers
DEFAULT_EPOCHS = {"cat": 1, "tuned-cat": 1, "lorahub": 1, "moe": 5, "arrow": 1}
TUNE_EPOCHS = 10  # tuned-cat: passes over the sample when training A and B (compose.md, recipe study)


def with_defaults(c: CatConfig) -> CatConfig:
    """c with the method's defaults where it leaves init, lr or epochs unset."""
    return dataclasses.replace(
        c,
        init=1.0 / max(1, len(c.adapters)) if c.init is None else c.init,
        lr=DEFAULT_LR.get(c.method) if c.lr is None else c.lr,
        epochs=DEFAULT_EPOCHS.get(c.method, 1) if c.epochs is None else c.epochs,
    )


@dataclass
class CatConfig:
    adapters: list[Path]
    data: list[str]
    out: Path
    method: str = "cat"  # cat | lorahub | moe | arrow
    base: str | None = None  # default: the base the adapters record
    fraction: float = 0.05
    balance: bool = False  # split the sample's rows evenly across the --data sources
    granularity: str = "module"  # bench/results/compose.md, recipe study: module beat layer on held-out seeds
    param: str = "free"
    init: float | None = None  # α's start [default: 1/k, the average of the skills]
    lr: float | None = None  # [default: DEFAULT_LR of the method]
    epochs: int | None = None  # [default: DEFAULT_EPOCHS of the method]
    max_steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 256
    val_fraction: float = 0.1
    warmup: float = 0.05
    profile: str = "peft"
    rank: int | None = None  # truncate the written adapter by SVD [default: Σ r_i, exact]
    load_in_4bit: bool = False
    fsdp: bool = False  # shard the base's decoder layers across the launcher's processes
    dtype: str = "auto"
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    force: bool = False
    eval_every: int = 0  # validate every N steps [0: about four times a run]
    budget: int = 40  # lorahub: loss evaluations of the search
    tune_epochs: int = TUNE_EPOCHS  # tuned-cat: passes over the sample training A and B
    tune_lr: float | None = None  # tuned-cat: [default: train-skill's learning rate for the base]
    top_k: int | None = None  # arrow: experts each token blends [default: all]
    temperature: float = 1.0  # arrow: softmax temperature of |W x|


@dataclass
class Fitting:
    """A fit ready for the loop: the run, the frozen adapters and the α being trained."""

    config: CatConfig
    run: loop.Run
    adapters: list
    alpha: layer.CatAlpha | None  # None for a routed mixture
    labels: list[str]  # the α groups
    group: dict[str, int]  # module -> its group
    base: str  # as the output records it
    sources: list[DataSample]
    dtype: str
    val0: float | None = None  # validation loss of the initial α
    best: dict[str, Any] = field(default_factory=dict)  # val_loss, step and raw α of the best validation so far
    routers: Any = None  # a routed mixture's core.routing.Routers


def check_options(c: CatConfig) -> None:
    from loramix.core.profiles import PROFILES

    if len(c.adapters) < 2:
        raise InputError(
            f"fit-cat needs at least two adapters, got {len(c.adapters)}",
            hint="loramix fit-cat math/ code/ --data builtin:math --data builtin:code -o soup/",
        )
    if not c.data:
        raise InputError(
            "fit-cat needs --data", hint="one --data per skill, e.g. --data builtin:math --data builtin:code"
        )
    if not 0 < c.fraction <= 1:
        raise InputError(f"--fraction {c.fraction}: must be in (0, 1]")
    if c.method not in METHODS:
        raise InputError(f"--method {c.method}: unknown", hint=f"choose one of {', '.join(METHODS)}")
    if c.method != "cat" and c.fsdp:
        raise InputError(f"--method {c.method} runs on one device; --fsdp is for cat only")
    if c.tune_epochs < 1:
        raise InputError(f"--tune-epochs {c.tune_epochs}: must be at least 1")
    loop.check_positive("--tune-lr", c.tune_lr)
    if c.budget < 1:
        raise InputError(f"--budget {c.budget}: must be at least 1")
    if c.top_k is not None and not 1 <= c.top_k <= len(c.adapters):
        raise InputError(f"--top-k {c.top_k}: must be from 1 to the number of adapters ({len(c.adapters)})")
    if not (c.temperature > 0 and math.isfinite(c.temperature)):
        raise InputError(f"--temperature {c.temperature}: must be a positive number")
    for name, value, allowed in (
        ("--granularity", c.granularity, layer.GRANULARITIES),
        ("--param", c.param, layer.PARAMS),
        ("--profile", c.profile, PROFILES),
    ):
        if value not in allowed:
            raise InputError(f"{name} {value}: unknown", hint=f"choose one of {', '.join(allowed)}")
    c = with_defaults(c)
    assert c.init is not None and c.epochs is not None
    if not math.isfinite(c.init):
        raise InputError(f"--init {c.init}: must be a finite number")
    if c.rank is not None and c.rank < 1:
        raise InputError(f"--rank {c.rank}: must be at least 1")
    if c.max_steps is not None and c.max_steps < 1:
        raise InputError(f"--steps {c.max_steps}: must be at least 1")
    dist.check_fsdp(c.fsdp)
    resolved = [Path(p).resolve() for p in c.adapters]
    if len(set(resolved)) < len(resolved):
        raise InputError("the same adapter is given twice", hint="each skill once; copy the folder to study twins")
    loop.check_common(
        lr=c.lr,
        epochs=c.epochs,
        max_steps=c.max_steps,
        batch_size=c.batch_size,
        grad_accum=c.grad_accum,
        max_length=c.max_length,
        val_fraction=c.val_fraction,
        warmup=c.warmup,
    )


def sample_rows(c: CatConfig) -> tuple[list[tuple[str, list[dict]]], list[DataSample]]:
    """`--fraction` of each --data set: a seeded sample of at least one row, per source (with
    --balance, the same total split evenly across the sources)."""
    from loramix.core import data

    samples, sources = [], []
    for dataset, rows in data.sample(c.data, c.fraction, c.seed, c.balance):
        data.warn_held_out(dataset.source)
        samples.append((dataset.source, rows))
        sources.append(DataSample(dataset.source, len(dataset.rows), len(rows), dataset.digest))
    return samples, sources


def mixed_examples(samples: list[tuple[str, list[dict]]], tokenizer, c: CatConfig) -> list:
    """The samples tokenized (each source refused on its own if no row fits), mixed and shuffled."""
    from loramix.core import data

    examples = []
    for source, rows in samples:
        examples += data.tokenize_all(rows, tokenizer, c.max_length, source)
    random.Random(c.seed + 1).shuffle(examples)
    return examples


def prepare(c: CatConfig, wrap: Callable | None = None) -> Fitting:
    """Check, load the adapters, the data and the base, and wrap the base: with CAT's layer, or
    with `wrap(model, adapters)` (which returns what Fitting.routers keeps)."""
    import torch

    from loramix.core import log, models
    from loramix.core.adapters import read_adapter

    c = with_defaults(c)
    assert c.init is not None and c.epochs is not None
    from loramix.core.compat import check_compatible
    from loramix.core.outputs import check_out, refuse_inputs
    from loramix.core.targets import check_adapter_shapes

    check_options(c)
    models.quiet_libraries()
    data_files = tuple(Path(d) for d in c.data if not d.startswith("builtin:"))
    check_out(c.out, c.force, inputs=tuple(c.adapters) + data_files + _local_base(c.base))
    adapters = [read_adapter(p, base=c.base) for p in c.adapters]
    for a in adapters:
        _refuse_what_cat_cannot_weigh(a)
    for warning in check_compatible(adapters, c.base):
        log.warn(warning)
    base = models.base_of(adapters, c.base)
    path = models.resolve_base(base)
    refuse_inputs(c.out, [path], "--out")  # the folder a hub name resolved to, too
    samples, sources = sample_rows(c)
    device, dtype, _ = models.setup(c.device, c.dtype, c.load_in_4bit, c.threads)
    tokenizer = models.load_tokenizer(path)
    examples = mixed_examples(samples, tokenizer, c)
    rows_train, rows_val = loop.split_rows(examples, c.val_fraction, c.seed)
    model = models.load_model(path, dtype, device, c.load_in_4bit, shardable=c.fsdp)
    check_adapter_shapes(model, adapters)
    torch.manual_seed(c.seed)
    alpha, routers = None, None
    labels: list[str] = []
    group: dict[str, int] = {}
    if wrap is None:
        alpha, labels, group = layer.wrap(model, adapters, c.granularity, c.param, c.init)
    else:
        routers = wrap(model, adapters)
    if c.fsdp:
        dist.shard_or_refuse(model, device, str(c.base or base))
    model.train()  # 4-bit bases: an eval-mode forward may repack their weights (docs/architecture.md, 4-bit bases)
    steps, per_epoch = loop.plan_steps(len(rows_train), c.batch_size, c.grad_accum, c.epochs, c.max_steps)
    settings = loop.LoopSettings(
        lr=c.lr or 0.0,  # lorahub and arrow never step an optimizer
        batch_size=c.batch_size,
        grad_accum=c.grad_accum,
        warmup=c.warmup,
        seed=c.seed,
        eval_every=c.eval_every or max(1, steps // 4),
    )
    run = loop.Run(settings, model, tokenizer, rows_train, rows_val, device, steps, per_epoch, sharded=c.fsdp)
    return Fitting(
        c,
        run,
        adapters,
        alpha,
        labels,
        group,
        models.base_record(base),
        sources,
        str(dtype).replace("torch.", ""),
        routers=routers,
    )


def train_keeping_best(f: Fitting, report, stop, snapshot: Callable, write_now: Callable, what: str) -> loop.History:
    """Run the loop on f.run, keeping `snapshot()` of the best validation in f.best["raw"]; the
    first Ctrl-C writes the result (`write_now(history)`, which reads f.best) and exits 130."""

    def update(step, fields):
        val = (fields or {}).get("val_loss")
        if val is not None and (f.best["val_loss"] is None or val < f.best["val_loss"]):
            f.best.update(val_loss=val, step=step, raw=snapshot())
        report(step, fields)

    def on_stop(history: loop.History):
        written = write_now(history)
        raise LoramixError(
            f"interrupted after step {len(history.loss)} of {f.run.steps}; wrote {f.config.out} with "
            f"the {what} of step {written.chosen_step}",
            exit_code=EXIT_INTERRUPTED,
        )

    return loop.fit(f.run, update, stop, on_stop)


def chosen(f: Fitting):
    """The trained tensor of the best-validation α, or the current one without a validation set."""
    if f.best["val_loss"] is not None or f.alpha is None:
        return f.best["raw"]
    return f.alpha.raw.detach().clone()


def write(f: Fitting, history: loop.History, interrupted: bool = False, tuned=None) -> FitReport:
    """The merged adapter, cat_weights.json and cat_weights.safetensors, written atomically; with
    `tuned` ((history, lr) of tuned-cat's second stage) the adapter holds the trained factors."""
    import torch
    from safetensors.torch import save_file

    from loramix.core.outputs import atomic_dir
    from loramix.core.profiles import layout, write_adapter

    c, raw = f.config, chosen(f)
    if tuned is None:
        factors = layer.folded_factors(f.adapters, raw, c.param, f.group, c.granularity)
    else:
        factors = layer.live_factors(f.run.model)
    factors, errors = truncate(factors, c.rank)
    dtypes = {a.dtype for a in f.adapters}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    config, factors = layout(factors, c.profile, f.adapters[0].config, f.base, dtype)
    ranks = [A.shape[0] for A, _ in factors.values()]
    report = fit_report(f, raw, history, interrupted)
    report.rank, report.svd_error = {"min": min(ranks), "max": max(ranks)}, _span(errors)
    if tuned is not None:
        done, lr = tuned
        report.tune = {
            "epochs": c.tune_epochs,
            "lr": lr,
            "steps": len(done.loss),
            "loss_curve": done.loss,
            "val_loss": done.val,
            "seconds": done.seconds,
        }
    alpha = torch.tensor([[float("nan") if v is None else v for v in row] for row in report.alpha])
    if dist.is_main():  # every process holds the same α: the first writes the result
        with atomic_dir(c.out, c.force) as tmp:
            write_adapter(tmp, config, factors)
            save_file({"alpha": alpha, "raw": raw.float().contiguous()}, str(tmp / TENSOR_NAME))
            (tmp / TABLE_NAME).write_text(json.dumps(report.to_json(), indent=1) + "\n")
    dist.barrier()
    return report


def truncate(factors: dict, rank: int | None) -> tuple[dict, dict[str, float]]:
    """--rank: the best rank-K approximation of each folded module, with its relative error."""
    from loramix.merge.factor import truncate_lowrank

    if rank is None:
        return factors, dict.fromkeys(factors, 0.0)
    out, errors = {}, {}
    for name, (A, B) in factors.items():
        A, B, errors[name] = truncate_lowrank(A, B, rank)
        out[name] = (A, B)
    return out, errors


def _span(errors: dict[str, float]) -> dict:
    values = list(errors.values())
    return {"max": max(values), "mean": sum(values) / len(values)}


def fit_report(f: Fitting, raw, history: loop.History, interrupted: bool) -> FitReport:
    from loramix import __version__

    c, run = f.config, f.run
    start = [{"epoch": 0.0, "step": 0, "loss": round(f.val0, 5)}] if f.val0 is not None else []
    return FitReport(
        method=c.method,
        version=__version__,
        base=f.base,
        granularity=c.granularity,
        param=c.param,
        init=c.init,
        adapters=[SkillAdapter(a.name, str(Path(a.path).resolve()), a.sha256()) for a in f.adapters],
        groups=f.labels,
        alpha=layer.group_table(f.adapters, raw, c.param, f.group, c.granularity) if raw is not None else [],
        # without validation rows CAT writes its last α; the other methods keep their best
        chosen_step=f.best["step"] if f.best["val_loss"] is not None or c.method != "cat" else len(history.loss),
        best_val_loss=f.best["val_loss"],
        data=f.sources,
        fraction=c.fraction,
        balance=c.balance,
        seed=c.seed,
        lr=c.lr,
        batch_size=c.batch_size,
        grad_accum=c.grad_accum,
        max_length=c.max_length,
        val_fraction=c.val_fraction,
        load_in_4bit=c.load_in_4bit,
        dtype=f.dtype,
        steps=len(history.loss),
        planned_steps=run.steps,
        interrupted=interrupted,
        rows_train=len(run.train),
        rows_val=len(run.val),
        tokens=history.tokens,
        seconds=history.seconds,
        loss_curve=history.loss,
        val_loss=start + history.val,
    )


def _local_base(base: str | None) -> tuple[Path, ...]:
    from loramix.core.models import local_folder

    folder = local_folder(base) if base is not None else None
    return (folder,) if folder is not None else ()


def _refuse_what_cat_cannot_weigh(a) -> None:
    """The CAT layer scales s·B·A: LoRAs on expert parameters, DoRA and modules_to_save are no such
    product, and are refused rather than half-fitted."""
    experts = sorted({m.slot.key.rsplit(".", 1)[-1] for m in a.modules.values() if m.slot is not None})
    parts = [f"LoRAs on expert parameters ({', '.join(experts)})"] if experts else []
    parts += ["DoRA modules"] if any(m.magnitude is not None for m in a.modules.values()) else []
    parts += [f"modules_to_save ({', '.join(a.saved)})"] if a.saved else []
    if parts:
        raise InputError(
            f"{a.path}: holds {' and '.join(parts)}; fit-cat learns the weights of plain LoRAs on linear modules",
            hint="merge it with loramix merge instead",
        )
