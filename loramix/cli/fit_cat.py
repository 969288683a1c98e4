"""`loramix fit-cat`: learn the layer-wise weights of frozen skill LoRAs (LoRA Soups' CAT)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def fit_cat(
    adapters: List[Path] = typer.Argument(..., help="Two or more skill adapters (PEFT folders) on one base.", show_default=False),
    data: List[str] = typer.Option(..., "--data", "-d", help="A skill's data: JSONL or builtin:NAME; repeat once per skill.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: the merged adapter plus the α table.", show_default=False),
    fraction: float = typer.Option(0.05, "--fraction", help="Share of each --data set used (the paper: 5%)."),
    granularity: str = typer.Option("layer", "--granularity", help="One α per adapter per layer, per module, or global."),
    param: str = typer.Option("free", "--param", help="free (α itself) or softmax (α = softmax of logits over adapters)."),
    init: float = typer.Option(1.0, "--init", help="Initial α for --param free."),
    lr: float = typer.Option(0.1, "--lr", help="Peak learning rate for α."),
    epochs: int = typer.Option(1, "--epochs", help="Passes over the mixed rows."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Stop after this many optimizer steps (overrides --epochs)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per forward pass."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Forward passes per optimizer step."),
    max_length: int = typer.Option(256, "--max-length", help="Tokens kept per row."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of the mixed rows held out; the α with the best validation loss is kept."),
    profile: str = typer.Option("peft", "--profile", help="peft, or portable (uniform rank, alpha == r, for vLLM and llama.cpp)."),
    rank: Optional[int] = typer.Option(None, "--rank", "-r", help="Truncate the written adapter to this rank by SVD [default: Σr, exact]."),
    base: Optional[str] = typer.Option(None, "--base", "-b", help="Base model [default: the one the adapters record]."),
    load_in_4bit: bool = typer.Option(False, "--load-in-4bit", help="Load the base in 4 bits (nf4, bitsandbytes; CPU or GPU)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch [default: one per core]."),
    seed: int = typer.Option(0, "--seed", help="Seed for the data sample, its order and the validation split."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace --out if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print the α table as JSON instead of tables."),
) -> None:
    """Learn how much of each skill every layer should use, and write one merged adapter.

    The skill LoRAs and the base stay frozen; only α is trained, on --fraction of each --data set,
    mixed. The result is an ordinary PEFT adapter of rank Σr with α·s folded into B, plus
    cat_weights.json and cat_weights.safetensors. Ctrl-C writes the result with the best α so far
    and exits 130. (PEFT's combination_type "cat" is one fixed weight per adapter: loramix merge -m cat.)

    Example: loramix fit-cat math/ code/ --data builtin:math --data builtin:code -o soup/
    """
    from loramix.cli import render
    from loramix.soup.fit import CatConfig, run_fit

    config = CatConfig(
        adapters=list(adapters), data=list(data), out=out, base=base, fraction=fraction, granularity=granularity,
        param=param, init=init, lr=lr, epochs=epochs, max_steps=steps, batch_size=batch_size, grad_accum=grad_accum,
        max_length=max_length, val_fraction=val_fraction, profile=profile, rank=rank, load_in_4bit=load_in_4bit, dtype=dtype,
        device=device, threads=threads, seed=seed, force=force,
    )
    doc = run_fit(config, lambda total: render.training_progress("fit-cat", total))
    if json_out:
        render.print_json(doc)
    else:
        for part in render.cat_view(doc, str(out), render.color_enabled(render.stdout())):
            render.stdout().print(part)
