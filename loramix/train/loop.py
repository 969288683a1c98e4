"""The optimiser loop shared by train-skill (LoRA weights) and fit-cat (the CAT weights α), read
top to bottom.

tokenized rows -> (train, val) -> AdamW with linear warm-up and cosine decay, gradient
accumulation, token-mean loss on the completion -> validation loss at each epoch's end (and every
`eval_every` steps) -> checkpoints (every `save_every` steps and on Ctrl-C). The data order is a
function of (seed, epoch) only and the RNG is reseeded per step, so a resumed run sees exactly the
batches an uninterrupted one would. The job (loramix.train.skill, loramix.soup.fit) builds the
model and decides what is trainable; the loop trains whatever requires a gradient.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramix.core import checkpoint, dist
from loramix.core.errors import EXIT_INTERRUPTED, InputError, LoramixError

# report(step, fields): fields None once at the start, then {"loss", "tokens_per_s", "val_loss"} per step
Report = Callable[[int, dict | None], None]


@dataclass(frozen=True)
class LoopSettings:
    """What the loop reads, and nothing else."""

    lr: float
    batch_size: int = 16
    grad_accum: int = 1
    warmup: float = 0.05  # share of the steps spent warming the learning rate up
    seed: int = 0
    eval_every: int = 0  # validate every N steps besides each epoch's end (0: only then)
    save_every: int = 0  # checkpoint every N steps (0: only on Ctrl-C)
    checkpoint: Path | None = None  # where checkpoints go
    fingerprint: dict = field(default_factory=dict)  # settings a resumed run must share (saved with each checkpoint)


@dataclass
class History:
    """What a run did: per-step loss, validation points, tokens, seconds, resume points."""

    loss: list[float] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)  # {"epoch", "step", "loss"}
    tokens: int = 0
    seconds: float = 0.0
    resumed_at: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "loss": self.loss,
            "val": self.val,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "resumed_at": self.resumed_at,
        }

    @classmethod
    def from_json(cls, doc: dict) -> History:
        return cls(
            list(doc["loss"]), list(doc["val"]), int(doc["tokens"]), float(doc["seconds"]), list(doc["resumed_at"])
        )


@dataclass
class Run:
    """Everything the loop needs, built by a job's `prepare`."""

    settings: LoopSettings
    model: Any
    tokenizer: Any
    train: list
    val: list
    device: str
    steps: int
    steps_per_epoch: int
    resume_from: tuple | None = None  # (weights, optimizer state, state) of a checkpoint
    sharded: bool = False  # FSDP holds the decoder layers' weights in shards (core.dist.shard_layers)


def check_common(
    *,
    lr: float | None,
    epochs: int,
    max_steps: int | None,
    batch_size: int,
    grad_accum: int,
    max_length: int,
    val_fraction: float,
    warmup: float,
) -> None:
    """Range checks of the options train-skill and fit-cat share (InputError, exit 2)."""
    for name, value, low in (
        ("--epochs", epochs, 1),
        ("--batch-size", batch_size, 1),
        ("--grad-accum", grad_accum, 1),
        ("--max-length", max_length, 2),
        ("--max-steps", max_steps, 1),
    ):
        if value is not None and value < low:
            raise InputError(f"{name} {value}: must be at least {low}")
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if not 0 <= warmup < 1:
        raise InputError(f"--warmup {warmup}: must be in [0, 1)")
    check_positive("--lr", lr)


def check_positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} {value}: must be a positive number")


def plan_steps(rows: int, batch_size: int, grad_accum: int, epochs: int, max_steps: int | None) -> tuple[int, int]:
    """(steps, steps per epoch) for `rows` training rows."""
    per_epoch = math.ceil(rows / (batch_size * grad_accum))
    return max_steps or per_epoch * epochs, per_epoch


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
    s = run.settings
    epoch, within = divmod(step, run.steps_per_epoch)
    order = epoch_order(len(run.train), s.seed, epoch)
    per_step = s.batch_size * s.grad_accum
    chosen = order[within * per_step : (within + 1) * per_step]
    return [[run.train[i] for i in chosen[j : j + s.batch_size]] for j in range(0, len(chosen), s.batch_size)]


def step_loss(run: Run, batches: list) -> tuple[float, int]:
    """Forward and backward over one step's micro-batches; the loss is the mean over all their
    completion tokens. Returns (loss, tokens processed)."""
    from loramix.core.data import IGNORE

    total = sum(sum(t != IGNORE for t in labels[1:]) for batch in batches for _, labels in batch)
    loss_sum, tokens = 0.0, 0
    for batch in batches:
        mine = dist.share(batch)  # with several processes, each takes its part of every micro-batch
        if not mine:
            if run.sharded:  # FSDP gathers each layer's weights in every process: all must run it
                (batch_loss(run, batch[:1])[0] * 0.0).backward()
            continue
        loss, n_tokens = batch_loss(run, mine)
        (loss / max(1, total)).backward()
        loss_sum += loss.item()
        tokens += n_tokens
    all_loss, all_tokens = dist.all_sum([loss_sum, tokens])
    return all_loss / max(1, total), int(all_tokens)


def batch_loss(run: Run, batch: list):
    """(summed token loss, tokens in the batch) for a list of examples."""
    import torch.nn.functional as F

    from loramix.core.data import IGNORE, collate

    b = {k: v.to(run.device) for k, v in collate(batch, run.tokenizer.pad_token_id).items()}
    logits = run.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int(b["attention_mask"].sum())


def validation_loss(run: Run, examples: list | None = None) -> float | None:
    """Mean completion-token loss on the held-out rows (or on `examples`). The model stays in train
    mode with only dropout off: an eval-mode forward may repack 4-bit weights (docs/architecture.md,
    4-bit bases)."""
    import torch

    from loramix.core.data import IGNORE

    rows = run.val if examples is None else examples
    if not rows:
        return None
    loss_sum, count = 0.0, 0
    dropouts = [m for m in run.model.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    for m in dropouts:
        m.eval()
    with torch.no_grad():
        for i in range(0, len(rows), run.settings.batch_size):
            batch = dist.share(rows[i : i + run.settings.batch_size])  # each process, its part
            if not batch:
                if run.sharded:  # every process runs every sharded forward
                    batch_loss(run, rows[i : i + 1])
                continue
            loss_sum += batch_loss(run, batch)[0].item()
            count += sum(sum(t != IGNORE for t in labels[1:]) for _, labels in batch)
    for m in dropouts:
        m.train()
    all_loss, all_count = dist.all_sum([loss_sum, count])
    return all_loss / max(1, all_count)


def fit(
    run: Run, report: Report, stop: Callable[[], bool] = lambda: False, on_stop: Callable[[History], None] | None = None
) -> History:
    """Train for run.steps optimizer steps (continuing from run.resume_from) and return the
    history. `report(step, fields)` is called after every step (first with fields None at the
    start); when `stop()` turns true, `on_stop(history)` runs if given (and must raise), else a
    checkpoint is saved and the run ends with exit code 130."""
    import torch

    s = run.settings
    params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    history = _restore(run, optimizer) if run.resume_from else History()
    warmup_steps = round(s.warmup * run.steps)
    start, began = len(history.loss), time.time() - history.seconds
    report(start, None)
    for step in range(start, run.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, run.steps, s.lr, warmup_steps)
        torch.manual_seed(s.seed * 1_000_003 + step)  # dropout in the base, if any, replays on resume
        tick = time.time()
        loss, tokens = step_loss(run, step_batches(run, step))
        dist.all_sum_grads(params)
        dist.clip_grad_norm(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        speed = tokens / max(1e-9, time.time() - tick)
        history.loss.append(round(loss, 5))
        history.tokens += tokens
        done, val = step + 1, None
        if done % run.steps_per_epoch == 0 or done == run.steps or (s.eval_every and done % s.eval_every == 0):
            val = validation_loss(run)
            if val is not None:
                history.val.append({"epoch": round(done / run.steps_per_epoch, 3), "step": done, "loss": round(val, 5)})
        history.seconds = round(time.time() - began, 2)
        report(done, {"loss": loss, "tokens_per_s": speed, "val_loss": val})
        if dist.any_true(stop()) and done < run.steps:
            if on_stop is not None:
                on_stop(history)
            folder = _save_checkpoint(run, optimizer, history)
            raise LoramixError(
                f"interrupted after step {done} of {run.steps}; checkpoint saved to {folder}",
                hint="continue with the same command plus --resume",
                exit_code=EXIT_INTERRUPTED,
            )
        if s.save_every and done % s.save_every == 0 and done < run.steps:
            _save_checkpoint(run, optimizer, history)
    return history


def trainable(model) -> dict:
    """The parameters the loop trains, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(run: Run, optimizer, history: History) -> Path:
    folder = run.settings.checkpoint
    if folder is None:
        raise LoramixError("interrupted; this run writes no checkpoints")
    weights = {name: dist.full(p) for name, p in trainable(run.model).items()}  # whole, if FSDP shards them
    opt = optimizer.state_dict()
    for entry in opt["state"].values():
        for key, value in entry.items():
            entry[key] = dist.full(value)
    if dist.is_main():  # every process holds the same weights and optimizer state
        state = {"run": run.settings.fingerprint, "history": history.to_json()}
        checkpoint.save(folder, weights, opt, state)
    dist.barrier()
    return folder


def checked_checkpoint(folder: Path, fingerprint: dict, model) -> tuple:
    """The checkpoint in `folder` of an interrupted run with these settings, or an InputError
    naming each difference."""
    weights, opt_state, state = checkpoint.load(folder)
    differ = [
        f"{k}: checkpoint {state['run'].get(k)!r}, now {v!r}"
        for k, v in fingerprint.items()
        if state["run"].get(k) != v
    ]
    if differ:
        raise InputError(
            f"{folder}: was made with different settings ({'; '.join(differ)})",
            hint="resume with the same options, or drop --resume and pass --force to start over",
        )
    if set(weights) != set(trainable(model)):
        raise InputError(
            f"{folder}: its weights do not match this model's LoRA", hint="drop --resume and pass --force to start over"
        )
    return weights, opt_state, state


def _restore(run: Run, optimizer) -> History:
    import torch

    assert run.resume_from is not None
    weights, opt_state, state = run.resume_from
    params = trainable(run.model)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(dist.like(p, weights[name]))
    by_index = list(params.values())  # the optimizer's one group holds them in this order
    for index, entry in opt_state["state"].items():
        for key, value in entry.items():
            if key != "step":
                entry[key] = dist.like(by_index[index], value)
    optimizer.load_state_dict(opt_state)
    history = History.from_json(state["history"])
    history.resumed_at.append(len(history.loss))
    return history


OOM_HINT = "lower --batch-size (raising --grad-accum keeps the step size), lower --max-length, or use --load-in-4bit"


@contextmanager
def memory_errors() -> Iterator[None]:
    """Turn an out-of-memory failure (CPU or CUDA) into one LoramixError with what to change."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, MemoryError) or "out of memory" in str(e) or "can't allocate memory" in str(e):
            raise LoramixError(
                f"out of memory while training ({str(e).splitlines()[0][:200] or type(e).__name__})", hint=OOM_HINT
            )
        raise
