"""One model's score on the items for `eval`: generation metrics (exact, numeric, program) or the
teacher-forced completion loss. Each returns the model's ModelScore and one record per item."""

from __future__ import annotations

import math
import time

from loramix.evaluate import generation, metrics
from loramix.evaluate.modelset import ModelSet
from loramix.evaluate.report import ModelScore


def _summary(scores: list[bool], tokens: int, seconds: float) -> ModelScore:
    n, correct = len(scores), sum(scores)
    return ModelScore(
        score=correct / n if n else 0.0,
        ci=metrics.wilson(correct, n),
        items_scored=n,
        tokens=tokens,
        seconds=seconds,
        correct=correct,
    )


def score_generation(
    ms: ModelSet, prompts: list[list[int]], rows: list[dict], expected: list, stops: list[str], c, run_programs, advance
) -> tuple[ModelScore, list[dict]]:
    """Generate a completion per item, score it, and summarise (score, 95% Wilson interval, tok/s)."""
    began = time.perf_counter()
    outs = generation.generate(ms.model, ms.tokenizer, prompts, c.max_new_tokens, c.batch_size, tuple(stops), advance)
    seconds = time.perf_counter() - began
    texts = [o.text for o in outs]
    extra: list[dict] = [{} for _ in rows]
    if c.metric == "exact":
        scores = [metrics.exact(t, e) for t, e in zip(texts, expected)]
    elif c.metric == "numeric":
        scores = [metrics.same_answer(t, e, c.tolerance) for t, e in zip(texts, expected)]
    else:
        ran = run_programs([metrics.program_text(t) for t in texts])
        scores = [r.ok and metrics.same_answer(r.output, e, c.tolerance) for r, e in zip(ran, expected)]
        extra = [{"printed": r.output, "error": r.error} for r in ran]
    items = [
        {"prompt": _prompt(row), "output": t, "expected": e, "score": int(s), **x}
        for row, t, e, s, x in zip(rows, texts, expected, scores, extra)
    ]
    return _summary(scores, sum(o.tokens for o in outs), seconds), items


def _prompt(row: dict):
    return row["prompt"] if "prompt" in row else generation.prompt_messages(row.get("messages", []))


def score_loss(ms: ModelSet, examples: list, rows: list[dict], c, advance) -> tuple[ModelScore, list[dict]]:
    """Teacher-forced completion loss: token-weighted mean, perplexity, bootstrap 95% interval."""
    from loramix.core import dist

    began = time.perf_counter()
    sums, counts = [], []
    chunks = [examples[start : start + c.batch_size] for start in range(0, len(examples), c.batch_size)]

    def one(chunk: list) -> tuple[list[float], list[int]]:
        out = _losses(ms, chunk)
        advance(len(chunk))
        return out

    for s, n in dist.map_parts(one, chunks):  # with several processes, the chunks are dealt out
        sums += s
        counts += n
    seconds = time.perf_counter() - began
    kept = [(s, n) for s, n in zip(sums, counts) if n]  # evaluate.py refuses data where none is
    loss = sum(s for s, _ in kept) / sum(n for _, n in kept)
    lo, hi = metrics.bootstrap_ratio([s for s, _ in kept], [n for _, n in kept], seed=c.seed)
    tokens = sum(len(ids) for ids, _ in examples)
    items = [{"prompt": _prompt(r), "loss": s / n if n else None, "tokens": n} for r, s, n in zip(rows, sums, counts)]
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return ModelScore(
        score=loss, ci=(lo, hi), items_scored=len(kept), tokens=tokens, seconds=seconds, perplexity=perplexity
    ), items


def _losses(ms: ModelSet, chunk: list) -> tuple[list[float], list[int]]:
    """Per row: summed loss over its labelled tokens, and how many there are."""
    import torch
    import torch.nn.functional as F

    from loramix.core.data import IGNORE, collate

    b = {k: v.to(ms.device) for k, v in collate(chunk, ms.tokenizer.pad_token_id).items()}
    with torch.no_grad():
        logits = ms.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
    labels = b["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return loss.sum(dim=1).tolist(), (labels != IGNORE).sum(dim=1).tolist()
