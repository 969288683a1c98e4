"""The `train-skill` job: one PEFT LoRA on one skill's data, trained by the shared loop.

rows -> tokens -> (train, val) -> a LoRA on the targeted projections -> loramix.train.loop.fit ->
a PEFT adapter plus train_log.json, written atomically. Checkpoints live beside --out
(OUT-checkpoint) until the run finishes; --resume continues one made with the same settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from loramix.core import checkpoint, dist
from loramix.core.errors import InputError
from loramix.core.interrupt import stop_on_interrupt
from loramix.train import loop
from loramix.train.report import TrainLog, TrainOptions, TrainSetup

# the settings a resumed run must share with the interrupted one
RUN_KEYS = (
    "base",
    "data_sha256",
    "rank",
    "alpha",
    "targets",
    "lr",
    "epochs",
    "max_steps",
    "rows_per_step",
    "max_length",
    "val_fraction",
    "warmup",
    "seed",
    "load_in_4bit",
    "dtype",
    "target_parameters",
)
BUNDLED_LR, OTHER_LR = 1e-3, 2e-4


@dataclass
class TrainConfig:
    data: str
    out: Path
    base: str = "loramix-tiny"
    rank: int = 32
    alpha: float = 64.0
    targets: list[str] | None = None  # default: every attention and MLP projection
    target_parameters: list[str] | None = None  # 3-D expert parameters to train LoRAs on too (MoE)
    lr: float | None = None  # default: 1e-3 on loramix-tiny, 2e-4 elsewhere
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 256
    val_fraction: float = 0.05
    warmup: float = 0.05
    save_every: int = 0
    resume: bool = False
    seed: int = 0
    load_in_4bit: bool = False
    dtype: str = "auto"
    device: str = "auto"
    threads: int | None = None
    limit: int | None = None
    trust_remote_code: bool = False
    fsdp: bool = False  # shard the decoder layers across the launcher's processes
    force: bool = False


@dataclass
class Prepared:
    """A run ready for the loop, with what its log records."""

    run: loop.Run
    setup: TrainSetup
    options: TrainOptions


def check_options(c: TrainConfig) -> None:
    if c.rank < 1:
        raise InputError(f"--rank {c.rank}: must be at least 1")
    if c.save_every < 0:
        raise InputError(f"--save-every {c.save_every}: must be at least 0")
    dist.check_fsdp(c.fsdp)
    loop.check_positive("--alpha", c.alpha)
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


def prepare(c: TrainConfig) -> Prepared:
    """Check everything that can be checked, then load the data, the base, the LoRA and (with
    --resume) the checkpoint, which must come from a run with the same settings."""
    from loramix.core import data, models

    _check_paths(c)
    dataset = data.load(c.data, c.limit)
    data.warn_held_out(c.data)
    device, dtype, threads = models.setup(c.device, c.dtype, c.load_in_4bit, c.threads)
    path = models.resolve_base(c.base)
    tokenizer = models.load_tokenizer(path, c.trust_remote_code)
    examples = data.tokenize_all(dataset.rows, tokenizer, c.max_length, c.data)
    train, val = loop.split_rows(examples, c.val_fraction, c.seed)
    base = models.load_model(path, dtype, device, c.load_in_4bit, c.trust_remote_code, shardable=c.fsdp)
    model, targets = _add_lora(base, c)
    if c.fsdp:
        dist.shard_or_refuse(model, device, c.base)
    lr = c.lr if c.lr is not None else BUNDLED_LR if c.base == models.BUNDLED else OTHER_LR
    steps, per_epoch = loop.plan_steps(len(train), c.batch_size, c.grad_accum, c.epochs, c.max_steps)
    setup = TrainSetup(
        base=models.base_record(c.base),
        data=c.data,
        data_sha256=dataset.digest,
        rows=len(dataset.rows),
        rows_too_long=len(dataset.rows) - len(examples),
        train_rows=len(train),
        val_rows=len(val),
        rows_per_step=c.batch_size * c.grad_accum,
        device=device,
        dtype=str(dtype).replace("torch.", ""),
        threads=threads,
        processes=dist.world(),
        fsdp=c.fsdp,
    )
    options = TrainOptions(
        rank=c.rank,
        alpha=c.alpha,
        targets=targets,
        lr=lr,
        epochs=c.epochs,
        max_steps=c.max_steps,
        batch_size=c.batch_size,
        grad_accum=c.grad_accum,
        max_length=c.max_length,
        val_fraction=c.val_fraction,
        warmup=c.warmup,
        seed=c.seed,
        load_in_4bit=c.load_in_4bit,
        limit=c.limit,
        target_parameters=c.target_parameters,
    )
    folder = checkpoint.checkpoint_dir(c.out)
    settings = loop.LoopSettings(
        lr=lr,
        batch_size=c.batch_size,
        grad_accum=c.grad_accum,
        warmup=c.warmup,
        seed=c.seed,
        save_every=c.save_every,
        checkpoint=folder,
        fingerprint=fingerprint(setup, options),
    )
    run = loop.Run(settings, model, tokenizer, train, val, device, steps, per_epoch, sharded=c.fsdp)
    if c.resume:
        run.resume_from = loop.checked_checkpoint(folder, settings.fingerprint, model)
    return Prepared(run, setup, options)


def fingerprint(setup: TrainSetup, options: TrainOptions) -> dict:
    """The settings a resumed run must share with the interrupted one."""
    values = {**vars(options), **vars(setup)}
    return {k: values[k] for k in RUN_KEYS}


def _check_paths(c: TrainConfig) -> None:
    from loramix.core import models
    from loramix.core.data import input_files
    from loramix.core.outputs import check_out, recover

    check_options(c)
    models.quiet_libraries()
    inputs = input_files([c.data]) + [f for f in [models.local_folder(c.base)] if f is not None]
    check_out(c.out, c.force, inputs)
    ckpt = checkpoint.checkpoint_dir(c.out)
    check_out(ckpt, force=True, inputs=inputs)  # the checkpoint beside --out must not hit an input either
    recover(ckpt)  # a run killed while replacing its checkpoint left it moved aside
    if c.resume and not ckpt.exists():
        raise InputError(f"{ckpt}: no checkpoint to resume from", hint="run without --resume to start afresh")
    if ckpt.exists() and not c.resume and not c.force:
        raise InputError(
            f"{ckpt}: a checkpoint of an interrupted run exists",
            hint="pass --resume to continue it, or --force (without --resume) to start over",
        )


def _add_lora(model, c: TrainConfig):
    """(the model with a fresh LoRA on the chosen projections, the targets' names)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from loramix.core.targets import resolve_targets

    targets = resolve_targets(model, c.targets, c.rank, c.target_parameters)
    torch.manual_seed(c.seed)
    config = LoraConfig(
        r=c.rank,
        lora_alpha=c.alpha,  # type: ignore[arg-type]  # annotated int; PEFT computes alpha / r in floats
        target_modules=targets,
        target_parameters=c.target_parameters or None,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.train()  # also for 4-bit bases: an eval-mode forward may repack their weights (docs/architecture.md, 4-bit bases)
    return model, targets


def save(p: Prepared, history: loop.History, out: Path, force: bool) -> TrainLog:
    """Write the adapter and train_log.json to `out` (atomically) and drop the checkpoint."""
    import shutil

    from loramix import __version__
    from loramix.core.outputs import atomic_dir

    log = TrainLog(__version__, p.setup, p.options, p.run.steps_per_epoch, history)
    weights = {name: dist.full(t) for name, t in loop.trainable(p.run.model).items()}  # whole, if sharded
    if dist.is_main():  # every process holds the same LoRA: the first writes it
        with atomic_dir(out, force) as tmp:
            p.run.model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
            (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model card names a temporary path
            config_path = tmp / "adapter_config.json"
            config = json.loads(config_path.read_text())
            config["base_model_name_or_path"] = p.setup.base
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            (tmp / "train_log.json").write_text(json.dumps(log.to_json(), indent=1) + "\n")
        shutil.rmtree(checkpoint.checkpoint_dir(out), ignore_errors=True)
    dist.barrier()
    return log


def run_training(c: TrainConfig, report_factory: Callable[[int], AbstractContextManager[loop.Report]]) -> TrainLog:
    """prepare -> fit -> save; `report_factory(total)` is a context manager yielding the per-step
    report function. Out-of-memory becomes one clear error."""
    with loop.memory_errors():
        p = prepare(c)
        with stop_on_interrupt() as stop:  # also spans save(): a Ctrl-C there lets it finish
            with report_factory(p.run.steps) as report:
                history = loop.fit(p.run, report, stop)
            return save(p, history, c.out, c.force)
