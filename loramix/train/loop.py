"""The skill-training loop: one LoRA on one skill's data, read top to bottom.

rows -> tokens -> (train, val) -> PEFT LoRA on the targeted projections -> AdamW with linear
warm-up and cosine decay, gradient accumulation, token-mean loss on the completion -> validation
loss each epoch -> checkpoints (every --save-every steps and on Ctrl-C) -> a PEFT adapter plus
train_log.json. The data order is a function of (seed, epoch) only, so a resumed run sees exactly
the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loramix.core import checkpoint
from loramix.core.interrupt import stop_on_interrupt
from loramix.core.errors import EXIT_INTERRUPTED, InputError, LoramixError

RUN_KEYS = ("base", "data_sha256", "rank", "alpha", "targets", "lr", "epochs", "max_steps", "rows_per_step",
            "max_length", "val_fraction", "warmup", "seed", "load_in_4bit", "dtype")


@dataclass
class TrainConfig:
    data: str
    out: Path
    base: str = "loramix-tiny"
    rank: int = 32
    alpha: float = 64.0
    targets: list[str] | None = None
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
    force: bool = False


@dataclass
class Run:
    """Everything the loop needs, built by `prepare`."""

    config: TrainConfig
    model: object
    tokenizer: object
    train: list
    val: list
    device: str
    steps: int
    steps_per_epoch: int
    record: dict = field(default_factory=dict)
    resume_from: tuple | None = None  # (weights, optimizer state, state) of the checkpoint


def check_options(c) -> None:
    """Range checks shared by train-skill and fit-cat (options a config lacks are skipped)."""
    for name, attr, low in (("--rank", "rank", 1), ("--epochs", "epochs", 1), ("--batch-size", "batch_size", 1),
                            ("--grad-accum", "grad_accum", 1), ("--max-length", "max_length", 2),
                            ("--save-every", "save_every", 0), ("--max-steps", "max_steps", 1)):
        value = getattr(c, attr, None)
        if value is not None and value < low:
            raise InputError(f"{name} {value}: must be at least {low}")
    if not 0 <= c.val_fraction < 1:
        raise InputError(f"--val-fraction {c.val_fraction}: must be in [0, 1)")
    if not 0 <= c.warmup < 1:
        raise InputError(f"--warmup {c.warmup}: must be in [0, 1)")
    for name, value in (("--lr", c.lr), ("--alpha", getattr(c, "alpha", None))):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{name} {value}: must be a positive number")


def learning_rate(step: int, steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to `peak` over `warmup_steps`, then cosine decay to 0 at `steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def split_rows(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): a seeded random `fraction` of the examples held out (at least one if > 0)."""
    import random

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction))) if fraction > 0 else 0
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def step_batches(run: Run, step: int) -> list:
    """The micro-batches (lists of examples) of optimizer step `step`; wraps at each epoch."""
    c = run.config
    epoch, within = divmod(step, run.steps_per_epoch)
    order = epoch_order(len(run.train), c.seed, epoch)
    per_step = c.batch_size * c.grad_accum
    chosen = order[within * per_step: (within + 1) * per_step]
    return [[run.train[i] for i in chosen[j: j + c.batch_size]] for j in range(0, len(chosen), c.batch_size)]


def prepare(c: TrainConfig) -> Run:
    """Check everything that can be checked, then load the data, the base, the LoRA and (with
    --resume) the checkpoint, which must come from a run with the same settings."""
    from loramix.core import data
    from loramix.core import models

    _check_paths(c)
    dataset = data.load(c.data, c.limit)
    data.warn_held_out(c.data)
    device, dtype, threads = models.setup(c.device, c.dtype, c.load_in_4bit, c.threads)
    path = models.resolve_base(c.base)
    tokenizer = models.load_tokenizer(path, c.trust_remote_code)
    examples = data.tokenize_all(dataset.rows, tokenizer, c.max_length, c.data)
    train, val = split_rows(examples, c.val_fraction, c.seed)
    model = _add_lora(models.load_model(path, dtype, device, c.load_in_4bit, c.trust_remote_code), c)
    if c.lr is None:
        c.lr = 1e-3 if c.base == models.BUNDLED else 2e-4
    steps_per_epoch = math.ceil(len(train) / (c.batch_size * c.grad_accum))
    record = {"base": models.base_record(c.base), "data": c.data, "data_sha256": dataset.digest,
              "rows": len(dataset.rows), "rows_too_long": len(dataset.rows) - len(examples),
              "train_rows": len(train), "val_rows": len(val), "rows_per_step": c.batch_size * c.grad_accum,
              "device": device, "dtype": str(dtype).replace("torch.", ""), "threads": threads}
    run = Run(c, model, tokenizer, train, val, device, c.max_steps or steps_per_epoch * c.epochs, steps_per_epoch, record)
    if c.resume:
        run.resume_from = _checked_checkpoint(run)
    return run


def _check_paths(c: TrainConfig) -> None:
    from loramix.core import models
    from loramix.core.outputs import check_out

    check_options(c)
    models.quiet_libraries()
    check_out(c.out, c.force)
    ckpt = checkpoint.checkpoint_dir(c.out)
    if c.resume and not ckpt.exists():
        raise InputError(f"{ckpt}: no checkpoint to resume from", hint="run without --resume to start afresh")
    if ckpt.exists() and not c.resume and not c.force:
        raise InputError(f"{ckpt}: a checkpoint of an interrupted run exists",
                         hint="pass --resume to continue it, or --force (without --resume) to start over")


def _add_lora(model, c: TrainConfig):
    import torch
    from peft import LoraConfig, get_peft_model

    from loramix.core.targets import resolve_targets

    c.targets = resolve_targets(model, c.targets, c.rank)
    torch.manual_seed(c.seed)
    config = LoraConfig(r=c.rank, lora_alpha=c.alpha, target_modules=c.targets, lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()  # also for 4-bit bases: an eval-mode forward may repack their weights (DESIGN §7)
    return model


def step_loss(run: Run, batches: list) -> tuple[float, int]:
    """Forward and backward over one step's micro-batches; the loss is the mean over all their
    completion tokens. Returns (loss, tokens processed)."""
    from loramix.core.data import IGNORE

    total = sum(sum(t != IGNORE for t in labels[1:]) for batch in batches for _, labels in batch)
    loss_sum, tokens = 0.0, 0
    for batch in batches:
        loss, n_tokens = _batch_loss(run, batch)
        (loss / max(1, total)).backward()
        loss_sum += loss.item()
        tokens += n_tokens
    return loss_sum / max(1, total), tokens


def _batch_loss(run: Run, batch: list):
    """(summed token loss, tokens in the batch) for a list of examples."""
    import torch.nn.functional as F

    from loramix.core.data import IGNORE, collate

    b = {k: v.to(run.device) for k, v in collate(batch, run.tokenizer.pad_token_id).items()}
    logits = run.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(),
                           ignore_index=IGNORE, reduction="sum")
    return loss, int(b["attention_mask"].sum())


def validation_loss(run: Run) -> float | None:
    """Mean completion-token loss on the held-out rows (model stays in train mode: DESIGN §7)."""
    import torch

    from loramix.core.data import IGNORE

    if not run.val:
        return None
    c, loss_sum, count = run.config, 0.0, 0
    dropouts = [m for m in run.model.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    for m in dropouts:  # only dropout goes to eval mode; the rest stays in train mode
        m.eval()
    with torch.no_grad():
        for i in range(0, len(run.val), c.batch_size):
            batch = run.val[i: i + c.batch_size]
            loss_sum += _batch_loss(run, batch)[0].item()
            count += sum(sum(t != IGNORE for t in labels[1:]) for _, labels in batch)
    for m in dropouts:
        m.train()
    return loss_sum / max(1, count)


def fingerprint(run: Run) -> dict:
    """The settings a resumed run must share with the interrupted one."""
    c = asdict(run.config)
    return {k: run.record.get(k, c.get(k)) for k in RUN_KEYS}


def fit(run: Run, report, stop=lambda: False, on_stop=None) -> dict:
    """Train for run.steps optimizer steps (continuing from run.resume_from) and return the
    history. `report(step, fields)` is called after every step (first with fields None at the
    start); when `stop()` turns true, `on_stop(history)` runs if given (and must raise), else a
    checkpoint is saved and the run ends with exit code 130."""
    import torch

    c, ckpt = run.config, checkpoint.checkpoint_dir(run.config.out)
    params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=0.0)
    history = {"loss": [], "val": [], "tokens": 0, "seconds": 0.0, "resumed_at": []}
    if run.resume_from:
        history = _restore(run, optimizer)
    warmup_steps = round(c.warmup * run.steps)
    start, began = len(history["loss"]), time.time() - history["seconds"]
    report(start, None)
    for step in range(start, run.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, run.steps, c.lr, warmup_steps)
        torch.manual_seed(c.seed * 1_000_003 + step)  # dropout in the base, if any, replays on resume
        tick = time.time()
        loss, tokens = step_loss(run, step_batches(run, step))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        speed = tokens / max(1e-9, time.time() - tick)
        history["loss"].append(round(loss, 5))
        history["tokens"] += tokens
        done, val = step + 1, None
        every = getattr(c, "eval_every", 0)
        if done % run.steps_per_epoch == 0 or done == run.steps or (every and done % every == 0):
            val = validation_loss(run)
            if val is not None:
                history["val"].append({"epoch": round(done / run.steps_per_epoch, 3), "step": done, "loss": round(val, 5)})
        history["seconds"] = round(time.time() - began, 2)
        report(done, {"loss": loss, "tokens_per_s": speed, "val_loss": val})
        if stop() and done < run.steps:
            if on_stop is not None:
                on_stop(history)
            _save_checkpoint(run, optimizer, ckpt, history)
            raise LoramixError(f"interrupted after step {done} of {run.steps}; checkpoint saved to {ckpt}",
                               hint="continue with the same command plus --resume", exit_code=EXIT_INTERRUPTED)
        if c.save_every and done % c.save_every == 0 and done < run.steps:
            _save_checkpoint(run, optimizer, ckpt, history)
    return history


def _trainable(run: Run) -> dict:
    return {n: p for n, p in run.model.named_parameters() if p.requires_grad}


def _save_checkpoint(run: Run, optimizer, folder: Path, history: dict) -> None:
    checkpoint.save(folder, _trainable(run), optimizer, {"run": fingerprint(run), "history": history})


def _checked_checkpoint(run: Run) -> tuple:
    """The checkpoint of an interrupted run with these settings, or an InputError naming each difference."""
    folder = checkpoint.checkpoint_dir(run.config.out)
    weights, opt_state, state = checkpoint.load(folder)
    now = fingerprint(run)
    differ = [f"{k}: checkpoint {state['run'].get(k)!r}, now {v!r}" for k, v in now.items() if state["run"].get(k) != v]
    if differ:
        raise InputError(f"{folder}: was made with different settings ({'; '.join(differ)})",
                         hint="resume with the same options, or drop --resume and pass --force to start over")
    if set(weights) != set(_trainable(run)):
        raise InputError(f"{folder}: its weights do not match this model's LoRA",
                         hint="drop --resume and pass --force to start over")
    return weights, opt_state, state


def _restore(run: Run, optimizer) -> dict:
    import torch

    weights, opt_state, state = run.resume_from
    with torch.no_grad():
        for name, p in _trainable(run).items():
            p.copy_(weights[name])
    optimizer.load_state_dict(opt_state)
    history = state["history"]
    history["resumed_at"].append(len(history["loss"]))
    return history


def save(run: Run, history: dict) -> Path:
    """Write the adapter and train_log.json to --out (atomically) and drop the checkpoint."""
    import shutil

    from loramix.core.outputs import atomic_dir

    c = run.config
    with atomic_dir(c.out, c.force) as tmp:
        run.model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model card names a temporary path
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = run.record["base"]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "train_log.json").write_text(json.dumps(train_log(run, history), indent=1) + "\n")
    shutil.rmtree(checkpoint.checkpoint_dir(c.out), ignore_errors=True)
    return c.out


def train_log(run: Run, history: dict) -> dict:
    from loramix import __version__

    c = run.config
    options = {k: getattr(c, k) for k in ("rank", "alpha", "targets", "lr", "epochs", "max_steps", "batch_size",
                                          "grad_accum", "max_length", "val_fraction", "warmup", "seed",
                                          "load_in_4bit", "limit")}
    seconds = history["seconds"]
    return {
        "loramix": __version__, "command": "train-skill", **run.record, "options": options,
        "steps": len(history["loss"]), "steps_per_epoch": run.steps_per_epoch,
        "tokens": history["tokens"], "seconds": seconds,
        "tokens_per_second": round(history["tokens"] / seconds, 1) if seconds else None,
        "final_loss": history["loss"][-1] if history["loss"] else None,
        "val_loss": history["val"], "loss_curve": history["loss"], "resumed_at_step": history["resumed_at"],
    }


OOM_HINT = "lower --batch-size (raising --grad-accum keeps the step size), lower --max-length, or use --load-in-4bit"


def run_training(c: TrainConfig, report_factory) -> dict:
    """prepare -> fit -> save; `report_factory(total)` is a context manager yielding the
    per-step report function. Returns the train log. Out-of-memory becomes one clear error."""
    with memory_errors():
        run = prepare(c)
        with stop_on_interrupt() as stop:  # also spans save(): a Ctrl-C there lets it finish
            with report_factory(run.steps) as report:
                history = fit(run, report, stop)
            save(run, history)
        return train_log(run, history)


@contextmanager
def memory_errors():
    """Turn an out-of-memory failure (CPU or CUDA) into one LoramixError with what to change."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, MemoryError) or "out of memory" in str(e) or "can't allocate memory" in str(e):
            raise LoramixError(f"out of memory while training ({str(e).splitlines()[0][:200] or type(e).__name__})",
                               hint=OOM_HINT)
        raise
