"""`loramix eval`: score the base and any number of adapters side by side on one data set."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from loramix.cli import options
from loramix.core.models import DType
from loramix.evaluate.metrics import Metric


def eval_models(
    data: str = typer.Option(
        ...,
        "--data",
        "-d",
        help="JSONL or builtin:NAME[:SPLIT] (built-in data: the eval split by default).",
        show_default=False,
    ),
    adapters: Optional[List[Path]] = typer.Option(
        None, "--adapter", "-a", help="An adapter folder to score; repeat for more.", show_default=False
    ),
    base: Optional[str] = options.base(help="Base model [default: the one the adapters record, else loramix-tiny]."),
    with_base: bool = typer.Option(True, "--with-base/--no-base", help="Score the base model too (the first row)."),
    metric: Metric = typer.Option(
        "exact",
        "--metric",
        "-m",
        case_sensitive=False,
        help="exact (normalised text), numeric (the last number), program (run it) or loss.",
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens generated per item at most."),
    batch_size: int = typer.Option(32, "--batch-size", help="Items per batch."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score the first N items only."),
    stop: Optional[List[str]] = typer.Option(
        None,
        "--stop",
        help="Stop string; repeat for more [default: a newline when no reference completion spans lines; --stop '' for none].",
        show_default=False,
    ),
    few_shot: Optional[Path] = typer.Option(
        None,
        "--few-shot",
        help="Prefix every prompt with this file (text as is; JSONL rows as prompt+completion blocks).",
    ),
    chat_template: bool = typer.Option(
        False, "--chat-template", help="Send each prompt as a user message through the tokenizer's chat template."
    ),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="numeric/program: absolute and relative tolerance."),
    timeout: float = typer.Option(5.0, "--timeout", help="program: wall-clock seconds per program."),
    max_length: int = typer.Option(1024, "--max-length", help="loss: tokens kept per row."),
    predictions: Optional[Path] = typer.Option(
        None, "--predictions", help="Write one JSONL row per item and model (prompt, output, expected, score)."
    ),
    load_in_4bit: bool = options.load_in_4bit(),
    dtype: DType = options.dtype(),
    device: str = options.device(),
    threads: Optional[int] = options.threads(),
    seed: int = options.seed("the loss interval's bootstrap (generation is greedy)"),
    force: bool = options.force("--predictions"),
    json_out: bool = options.json_out("the table"),
) -> None:
    """Score the base and each adapter on the same items, side by side.

    One row per model: the metric, its 95% interval (Wilson for accuracies, bootstrap for the
    loss), items scored and tokens per second. Metrics: exact (normalised exact match), numeric
    (the last number against "answer"), program (run the output as Python in a sandbox, compare
    what it prints or solution() returns with "answer") and loss (teacher-forced, with perplexity).

    Example: loramix eval -d builtin:math-code -a math/ -a code/ -a soup/ --metric program
    """
    from loramix.cli.render import console, progress, views
    from loramix.evaluate.job import EvalConfig, run_eval

    config = EvalConfig(
        data=data,
        adapters=list(adapters or []),
        base=base,
        with_base=with_base,
        metric=metric.value,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        limit=limit,
        stops=list(stop) if stop else None,
        few_shot=few_shot,
        chat_template=chat_template,
        tolerance=tolerance,
        timeout=timeout,
        max_length=max_length,
        predictions=predictions,
        load_in_4bit=load_in_4bit,
        dtype=dtype.value,
        device=device,
        threads=threads,
        seed=seed,
        force=force,
    )
    report = run_eval(config, progress.progress_items)
    if json_out:
        console.print_json(report.to_json())
    else:
        console.stdout().print(views.eval_table(report))
