"""`loramix train-skill`: train one LoRA on one skill's data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loramix.cli import options
from loramix.core.models import DType


def train_skill(
    data: str = typer.Argument(
        ..., help="A JSONL file or builtin:NAME[:SPLIT] (see `loramix data`).", show_default=False
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output adapter folder.", show_default=False),
    base: str = options.base("loramix-tiny", "Base model: loramix-tiny, a local folder or a hub name."),
    rank: int = typer.Option(32, "--rank", "-r", help="LoRA rank."),
    alpha: float = typer.Option(64.0, "--alpha", help="LoRA alpha (scale = alpha / rank)."),
    targets: Optional[str] = typer.Option(
        None,
        "--targets",
        "-t",
        help="Comma-separated module names, e.g. q_proj,v_proj [default: every attention and MLP projection].",
    ),
    target_parameters: Optional[str] = typer.Option(
        None,
        "--target-parameters",
        help="Comma-separated 3-D expert parameters to train LoRAs on too (MoE models), e.g. mlp.experts.gate_up_proj,mlp.experts.down_proj.",
    ),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="Peak learning rate [default: 1e-3 on loramix-tiny, 2e-4 otherwise]."
    ),
    epochs: int = typer.Option(1, "--epochs", help="Passes over the training rows."),
    max_steps: Optional[int] = typer.Option(
        None, "--max-steps", help="Stop after this many optimizer steps (overrides --epochs)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per forward pass."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Forward passes per optimizer step."),
    max_length: int = typer.Option(256, "--max-length", help="Tokens kept per row."),
    val_fraction: float = typer.Option(
        0.05, "--val-fraction", help="Share of rows held out for the validation loss (0 for none)."
    ),
    warmup: float = typer.Option(0.05, "--warmup", help="Share of the steps spent warming the learning rate up."),
    save_every: int = typer.Option(0, "--save-every", help="Write a checkpoint every N steps (0: only on Ctrl-C)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from OUT-checkpoint, the checkpoint of an interrupted run."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N rows of DATA."),
    load_in_4bit: bool = options.load_in_4bit(),
    dtype: DType = options.dtype(),
    device: str = options.device(),
    threads: Optional[int] = options.threads(),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Allow a base model to run its own Python code."
    ),
    fsdp: bool = options.fsdp(),
    seed: int = options.seed("the LoRA init, the validation split and the data order"),
    force: bool = options.force("--out (and any old checkpoint)"),
    json_out: bool = options.json_out("a table"),
) -> None:
    """Train one LoRA on one skill's data and write it as a PEFT adapter plus train_log.json.

    Rows are {"prompt", "completion"} (loss on the completion only), {"text"} or {"messages"}.
    Ctrl-C stops after the current step, saves OUT-checkpoint and exits 130; --resume continues
    with the same data order.

    Example: loramix train-skill builtin:math -o math/ --rank 16
    """
    from loramix.cli.render import console, progress, views
    from loramix.train.skill import TrainConfig, run_training

    config = TrainConfig(
        data=data,
        out=out,
        base=base,
        rank=rank,
        alpha=alpha,
        targets=_split(targets),
        target_parameters=_split(target_parameters),
        lr=lr,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        val_fraction=val_fraction,
        warmup=warmup,
        save_every=save_every,
        resume=resume,
        seed=seed,
        load_in_4bit=load_in_4bit,
        dtype=dtype.value,
        device=device,
        threads=threads,
        limit=limit,
        trust_remote_code=trust_remote_code,
        fsdp=fsdp,
        force=force,
    )
    log = run_training(config, lambda total: progress.training_progress("train-skill", total))
    if json_out:
        console.print_json(log.to_json())
    else:
        console.stdout().print(views.train_summary(log, out))


def _split(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]
