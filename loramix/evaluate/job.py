"""The `eval` job: one data set, the base and any number of adapters scored on the same items.

The base is loaded once; adapters are loaded into it as named PEFT adapters and switched in place
(the base row runs with every adapter disabled). Each model: batched greedy generation (or
teacher-forced loss), a score per item, the mean with its 95% interval, tokens per second.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from loramix.core import dist
from loramix.core.errors import InputError
from loramix.evaluate import generation, metrics
from loramix.evaluate.report import EvalReport, EvalSettings, ModelScore


@dataclass
class EvalConfig:
    data: str
    adapters: list[Path] = field(default_factory=list)
    base: str | None = None  # default: the base the adapters record, else the bundled model
    with_base: bool = True
    metric: str = "exact"
    max_new_tokens: int = 64
    batch_size: int = 32
    limit: int | None = None
    stops: list[str] | None = None  # default: a newline when no reference completion spans lines
    few_shot: Path | None = None
    chat_template: bool = False
    tolerance: float = 1e-4
    timeout: float = 5.0  # per program (metric program)
    max_length: int = 1024  # tokens per row (metric loss)
    predictions: Path | None = None
    load_in_4bit: bool = False
    dtype: str = "auto"
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    force: bool = False


def check_options(c: EvalConfig) -> None:
    from loramix.core.outputs import check_file

    if c.metric not in metrics.METRICS:
        raise InputError(f"--metric {c.metric}: unknown", hint=f"choose one of {', '.join(metrics.METRICS)}")
    if not c.adapters and not c.with_base:
        raise InputError("nothing to score: --no-base and no --adapter")
    for name, value in (
        ("--batch-size", c.batch_size),
        ("--max-new-tokens", c.max_new_tokens),
        ("--limit", c.limit),
        ("--max-length", c.max_length),
    ):
        if value is not None and value < 1:
            raise InputError(f"{name} {value}: must be at least 1")
    if not (c.tolerance >= 0 and math.isfinite(c.tolerance)):
        raise InputError(f"--tolerance {c.tolerance}: must be a finite number >= 0")
    if not (c.timeout > 0 and math.isfinite(c.timeout)):
        raise InputError(f"--timeout {c.timeout}: must be a positive number of seconds")
    seen = set()
    for p in c.adapters:
        if Path(p).resolve() in seen:
            raise InputError(f"{p}: given twice as --adapter")
        seen.add(Path(p).resolve())
    if c.metric == "loss" and (c.few_shot or c.chat_template):
        raise InputError(
            "--few-shot and --chat-template shape generated prompts; --metric loss scores the rows as they are"
        )
    if c.predictions is not None:
        from loramix.core import models
        from loramix.core.data import input_files

        inputs = input_files([c.data] + ([str(c.few_shot)] if c.few_shot else [])) + list(c.adapters)
        base = models.local_folder(c.base) if c.base is not None else None
        inputs += [base] if base is not None else []
        check_file(c.predictions, c.force, "--predictions", inputs)


def source_of(data: str) -> str:
    """Built-in data without a split is scored on its eval split."""
    if data.startswith("builtin:") and data.count(":") == 1:
        return data + ":eval"
    return data


def load_rows(c: EvalConfig):
    """The data set, each row checked for what the metric needs (file and row named if not)."""
    from loramix.core import data

    dataset = data.load(source_of(c.data), c.limit)
    for i, row in enumerate(dataset.rows, 1):
        where = f"{dataset.source}: row {i}"
        if c.metric != "loss" and "text" in row:
            raise InputError(
                f'{where}: has only "text"; --metric {c.metric} needs prompts',
                hint='use --metric loss, or {"prompt", "completion"} rows',
            )
        if c.metric != "loss" and "messages" in row and row["messages"][-1]["role"] != "assistant":
            raise InputError(f"{where}: its messages do not end with the assistant turn to compare with")
        if c.metric == "numeric" and "answer" not in row and metrics.last_number(reference(row)) is None:
            raise InputError(f'{where}: has no "answer" and no number in its completion')
    return dataset


def reference(row: dict) -> str:
    """The reference completion: "completion", or the final assistant message."""
    return row["completion"] if "completion" in row else row.get("messages", [{}])[-1].get("content", "")


def default_stops(c: EvalConfig, rows: list[dict]) -> list[str]:
    if c.stops is not None:
        return [s for s in c.stops if s]
    return [] if any("\n" in reference(r).strip() for r in rows if "text" not in r) else ["\n"]


def few_shot_prefix(path: Path | None) -> str:
    """--few-shot: a text file used as is, or a JSONL file of prompt/completion rows, one per block."""
    from loramix.core import data

    if path is None:
        return ""
    if not path.is_file():
        raise InputError(f"{path}: no such file", hint="--few-shot takes a text or JSONL file")
    if path.suffix != ".jsonl":
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path}: not UTF-8 text")
    rows = data.load(str(path)).rows
    if any("prompt" not in r for r in rows):
        raise InputError(f'{path}: few-shot rows need "prompt" and "completion"')
    return "".join(r["prompt"] + r["completion"] + "\n\n" for r in rows)


def expected_values(c: EvalConfig, rows: list[dict], run_programs, source: str) -> list:
    """What each item is compared with: the reference text (exact), the answer (numeric,
    program), or for program rows without one, what the reference program prints."""
    if c.metric == "exact":
        return [reference(r) for r in rows]
    if c.metric == "numeric":
        return [r["answer"] if "answer" in r else metrics.last_number(reference(r)) for r in rows]
    expected = [r.get("answer") for r in rows]
    missing = [i for i, r in enumerate(rows) if "answer" not in r]
    for i, result in zip(missing, run_programs([metrics.program_text(reference(rows[i])) for i in missing])):
        if not result.ok:
            raise InputError(f'{source}: row {i + 1}: has no "answer" and its reference program fails ({result.error})')
        expected[i] = result.output.strip()
    return expected


def write_predictions(path: Path, records: list[dict]) -> None:
    from loramix.core.outputs import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def model_names(adapters: list[Path]) -> list[str]:
    """Row names: the folder's name, with as many parent folders as it takes to tell adapters
    apart from each other and from the base row."""
    parts = [Path(p).resolve().parts for p in adapters]
    names = [p[-1] for p in parts]
    for depth in range(2, max((len(p) for p in parts), default=1) + 1):
        clash = {n for n in names if names.count(n) > 1 or n == "base"}
        if not clash:
            break
        names = ["/".join(p[-depth:]) if n in clash else n for p, n in zip(parts, names)]
    return names


def run_eval(c: EvalConfig, progress) -> EvalReport:
    """Check, load, score every model, write --predictions; returns the report (`--json` prints it).
    `progress(description, total)` is a context manager yielding a function called with items done."""
    import torch

    from loramix.core import log
    from loramix.evaluate import modelset, score

    check_options(c)
    dataset = load_rows(c)
    adapters, base, path, tokenizer = open_base(c)
    prefix, stops = few_shot_prefix(c.few_shot), default_stops(c, dataset.rows)
    inputs = model_inputs(c, dataset, tokenizer, prefix)
    expected = None if c.metric == "loss" else expected_values(c, dataset.rows, run_programs(c), dataset.source)
    ms = modelset.load_models(c, adapters, base, path, tokenizer, model_names(c.adapters))
    torch.manual_seed(c.seed)  # greedy decoding is deterministic; this pins anything else
    results, records = [], []
    for name, adapter in ms.entries():
        with ms.active(adapter), progress(f"scoring {name}", len(dataset.rows)) as own:
            advance = _all_processes(own)
            if c.metric == "loss":
                result, items = score.score_loss(ms, inputs, dataset.rows, c, advance)
            else:
                assert expected is not None
                result, items = score.score_generation(
                    ms, inputs, dataset.rows, expected, stops, c, run_programs(c), advance
                )
        result.name, result.adapter = name, None if adapter is None else str(Path(adapter).resolve())
        records += [dict(model=name, index=i, **item) for i, item in enumerate(items)]
        results.append(result)
        log.note(f"eval: {name}: {c.metric} {result.score:.4g}")
    if c.predictions is not None and dist.is_main():  # every process holds every record
        write_predictions(c.predictions, records)
    return report(c, dataset, ms, stops, prefix, results)


def _all_processes(advance):
    """The first process's progress stands for all: each of n processes does about 1/n of the items."""
    n = dist.world()
    return advance if n == 1 else (lambda done: advance(done * n))


def run_programs(c: EvalConfig):
    """The sandbox with --timeout as its wall-clock and CPU limits (the programs dealt out among
    the processes, if there are several)."""
    from loramix.evaluate import sandbox

    limits = sandbox.Limits(timeout=c.timeout, cpu_seconds=math.ceil(c.timeout))
    return lambda codes: dist.map_shares(lambda part: sandbox.run_programs(part, limits), codes)


def open_base(c: EvalConfig):
    """The adapters (checked), the base to load and its tokenizer: (adapters, base, path, tokenizer);
    a routed mixture's entry is the list of its experts."""
    from loramix.core import log, models, routing
    from loramix.core.adapters import read_adapter
    from loramix.core.compat import check_compatible

    models.quiet_libraries()
    adapters = [
        routing.read_experts(p, c.base) if routing.is_routed(p) else read_adapter(p, base=c.base) for p in c.adapters
    ]
    flat = [a for entry in adapters for a in (entry if isinstance(entry, list) else [entry])]
    for warning in check_compatible(flat, c.base) if flat else []:
        log.warn(warning)
    base = models.base_of(flat, c.base)
    path = models.resolve_base(base)
    return adapters, base, path, models.load_tokenizer(path)


def model_inputs(c: EvalConfig, dataset, tokenizer, prefix: str) -> list:
    """Token ids per item: prompts to generate from, or (ids, labels) for the loss; refused here,
    before any model is loaded, where the tokenizer cannot render them."""
    from loramix.core import data

    chat = c.chat_template or any("messages" in r for r in dataset.rows)
    if chat and not getattr(tokenizer, "chat_template", None):
        what = "--chat-template" if c.chat_template else f'{dataset.source}: "messages" rows'
        raise InputError(
            f"{what}: the base's tokenizer has no chat template",
            hint='use {"prompt", "completion"} rows without --chat-template',
        )
    if c.metric != "loss":
        return generation.prompt_ids(dataset.rows, tokenizer, prefix, c.chat_template, dataset.source)
    examples = data.tokenize_rows(dataset.rows, tokenizer, c.max_length, dataset.source)
    if not any(data.has_loss(e) for e in examples):
        raise InputError(
            f"{dataset.source}: no row has a completion token within --max-length {c.max_length}",
            hint="raise --max-length or shorten the prompts",
        )
    return examples


def report(c: EvalConfig, dataset, ms, stops: list[str], prefix: str, results: list[ModelScore]) -> EvalReport:
    from loramix import __version__

    settings = EvalSettings(
        max_new_tokens=c.max_new_tokens,
        batch_size=c.batch_size,
        stop=stops,
        few_shot=str(c.few_shot) if c.few_shot else None,
        few_shot_chars=len(prefix),
        chat_template=c.chat_template,
        tolerance=c.tolerance,
        timeout=c.timeout,
        max_length=c.max_length,
        limit=c.limit,
        seed=c.seed,
    )
    return EvalReport(
        version=__version__,
        data=dataset.source,
        sha256=dataset.digest,
        items=len(dataset.rows),
        metric=c.metric,
        setup=ms.setup,
        settings=settings,
        models=results,
    )
