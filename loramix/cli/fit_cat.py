"""`loramix fit-cat`: learn the layer-wise weights of frozen skill LoRAs (LoRA Soups' CAT)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from loramix.cli import options
from loramix.core.models import DType
from loramix.core.profiles import Profile
from loramix.soup.table import Granularity, Method, Param


def fit_cat(
    adapters: List[Path] = typer.Argument(
        ..., help="Two or more skill adapters (PEFT folders) on one base.", show_default=False
    ),
    data: List[str] = typer.Option(
        ..., "--data", "-d", help="A skill's data: JSONL or builtin:NAME; repeat once per skill.", show_default=False
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder: the merged adapter plus the α table.", show_default=False
    ),
    method: Method = typer.Option(
        "cat",
        "--method",
        "-m",
        case_sensitive=False,
        help="cat (α per module, by gradient), tuned-cat (cat, then the merged adapter trained on the same "
        "rows), lorahub (one weight per adapter, CMA-ES), moe (a learned token router per module) or arrow "
        "(a token router from the adapters alone); moe and arrow write a routed mixture that loramix eval "
        "scores.",
    ),
    fraction: float = typer.Option(0.05, "--fraction", help="Share of each --data set used (the paper: 5%)."),
    balance: bool = typer.Option(
        False,
        "--balance",
        help="Split the sample's rows (Σ --fraction × rows) evenly across the --data sets, so a large set "
        "does not outweigh a small one.",
    ),
    granularity: Granularity = typer.Option(
        "module",
        "--granularity",
        case_sensitive=False,
        help="One α per adapter per module (best in bench/compose.py), per layer (the paper's), global, or "
        "rank (one per rank-1 component of each adapter's module).",
    ),
    param: Param = typer.Option(
        "free",
        "--param",
        case_sensitive=False,
        help="free (α itself) or softmax (α = softmax of logits over adapters).",
    ),
    init: Optional[float] = typer.Option(
        None, "--init", help="Initial α for --param free [default: 1/k, the skills' average]."
    ),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="Peak learning rate [default: 0.1 for cat's α, 1e-3 for moe's routers]."
    ),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", help="Passes over the mixed rows [default: 1 for cat, 5 for moe]."
    ),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="Stop after this many optimizer steps (overrides --epochs)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per forward pass."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Forward passes per optimizer step."),
    max_length: int = typer.Option(256, "--max-length", help="Tokens kept per row."),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="Share of the mixed rows held out; the α with the best validation loss is kept."
    ),
    tune_epochs: int = typer.Option(
        10, "--tune-epochs", help="tuned-cat: passes over the sample training the merged adapter's A and B."
    ),
    tune_lr: Optional[float] = typer.Option(
        None, "--tune-lr", help="tuned-cat: learning rate of that training [default: train-skill's for the base]."
    ),
    budget: int = typer.Option(40, "--budget", help="lorahub: loss evaluations of the search."),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", help="arrow: experts each token blends [default: all of them]."
    ),
    temperature: float = typer.Option(1.0, "--temperature", help="arrow: softmax temperature of the routing."),
    profile: Profile = options.profile(),
    rank: Optional[int] = options.rank("Truncate the written adapter to this rank by SVD [default: Σr, exact]."),
    base: Optional[str] = options.base(),
    load_in_4bit: bool = options.load_in_4bit(),
    fsdp: bool = options.fsdp(),
    dtype: DType = options.dtype(),
    device: str = options.device(),
    threads: Optional[int] = options.threads(),
    seed: int = options.seed("the data sample, its order and the validation split"),
    force: bool = options.force(),
    json_out: bool = options.json_out(),
) -> None:
    """Learn how much of each skill every layer should use, and write one merged adapter.

    The skill LoRAs and the base stay frozen; only α is trained, on --fraction of each --data set,
    mixed. The result is an ordinary PEFT adapter of rank Σr with α·s folded into B, plus
    cat_weights.json and cat_weights.safetensors. Ctrl-C writes the result with the best α so far
    and exits 130. (PEFT's combination_type "cat" is one fixed weight per adapter: loramix merge -m cat.)

    Example: loramix fit-cat math/ code/ --data builtin:math --data builtin:code -o soup/
    """
    from loramix.cli.render import console, progress, views
    from loramix.soup.fit import CatConfig
    from loramix.soup.job import run_fit

    config = CatConfig(
        adapters=list(adapters),
        data=list(data),
        out=out,
        method=method.value,
        base=base,
        fraction=fraction,
        balance=balance,
        granularity=granularity.value,
        param=param.value,
        init=init,
        lr=lr,
        epochs=epochs,
        max_steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        val_fraction=val_fraction,
        profile=profile.value,
        rank=rank,
        load_in_4bit=load_in_4bit,
        fsdp=fsdp,
        dtype=dtype.value,
        device=device,
        threads=threads,
        seed=seed,
        force=force,
        budget=budget,
        tune_epochs=tune_epochs,
        tune_lr=tune_lr,
        top_k=top_k,
        temperature=temperature,
    )
    report = run_fit(config, lambda total: progress.training_progress("fit-cat", total))
    if json_out:
        console.print_json(report.to_json())
    else:
        for part in views.cat_view(report, str(out), console.color_enabled(console.stdout())):
            console.stdout().print(part)
