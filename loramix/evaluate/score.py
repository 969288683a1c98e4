"""Scoring for `eval`: the base with its adapters switched in place, and one model's score on the
items (generation metrics, or the teacher-forced completion loss)."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from loramix.evaluate import generation
from loramix.evaluate import metrics


@dataclass
class ModelSet:
    """One base model with k adapters loaded as named PEFT adapters ("a0", "a1", ...)."""

    model: object
    tokenizer: object
    device: str
    base: str
    names: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    with_base: bool = True
    record: dict = field(default_factory=dict)

    def entries(self) -> list[tuple[str, Path | None]]:
        return ([("base", None)] if self.with_base else []) + list(zip(self.names, self.paths))

    @contextmanager
    def active(self, adapter: Path | None):
        """The model as it scores `adapter` (None: the base, every adapter off)."""
        if not self.paths:
            yield self.model
        elif adapter is None:
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(f"a{self.paths.index(adapter)}")
            yield self.model


def load_models(c, adapters: list, base: str, path: Path, tokenizer, names: list[str]) -> ModelSet:
    """The base and every adapter on it, set for inference."""
    from loramix.core import models
    from loramix.core.targets import check_adapter_shapes

    device, dtype, threads = models.setup(c.device, c.dtype, c.load_in_4bit, c.threads)
    model = models.load_model(path, dtype, device, c.load_in_4bit)
    check_adapter_shapes(model, adapters)
    if adapters:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapters[0].path), adapter_name="a0")
        for i, a in enumerate(adapters[1:], 1):
            model.load_adapter(str(a.path), adapter_name=f"a{i}")
    inference_mode(model, c.load_in_4bit)
    record = {"base": models.base_record(base), "device": device, "dtype": str(dtype).removeprefix("torch."),
              "threads": threads, "load_in_4bit": c.load_in_4bit}
    return ModelSet(model, tokenizer, device, record["base"], names, list(c.adapters), c.with_base, record)


def inference_mode(model, load_in_4bit: bool) -> None:
    """eval() for inference; a 4-bit base stays in train mode with only dropout off, because
    bitsandbytes repacks 4-bit weights during an eval-mode CPU forward, wrongly (DESIGN §7) or not
    at all (it fails where in_features is not a multiple of its block size, as in loramix-tiny)."""
    import torch

    if not load_in_4bit:
        model.eval()
        return
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()


def _summary(scores: list[bool], tokens: int, seconds: float, items: list[dict]) -> dict:
    n, correct = len(scores), sum(scores)
    lo, hi = metrics.wilson(correct, n)
    return {"score": correct / n if n else 0.0, "ci": [lo, hi], "correct": correct, "items_scored": n, "tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "items": items}


def score_generation(ms: ModelSet, prompts: list[list[int]], rows: list[dict], expected: list, stops: list[str],
                     c, run_programs, advance) -> dict:
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
    items = [{"prompt": _prompt(row), "output": t, "expected": e, "score": int(s), **x}
             for row, t, e, s, x in zip(rows, texts, expected, scores, extra)]
    return _summary(scores, sum(o.tokens for o in outs), seconds, items)


def _prompt(row: dict):
    return row["prompt"] if "prompt" in row else generation.prompt_messages(row.get("messages", []))


def score_loss(ms: ModelSet, examples: list, rows: list[dict], c, advance) -> dict:
    """Teacher-forced completion loss: token-weighted mean, perplexity, bootstrap 95% interval."""
    began = time.perf_counter()
    sums, counts = [], []
    for start in range(0, len(examples), c.batch_size):
        chunk = examples[start: start + c.batch_size]
        s, n = _losses(ms, chunk)
        sums += s
        counts += n
        advance(len(chunk))
    seconds = time.perf_counter() - began
    kept = [(s, n) for s, n in zip(sums, counts) if n]  # evaluate.py refuses data where none is
    loss = sum(s for s, _ in kept) / sum(n for _, n in kept)
    lo, hi = metrics.bootstrap_ratio([s for s, _ in kept], [n for _, n in kept], seed=c.seed)
    tokens = sum(len(ids) for ids, _ in examples)
    items = [{"prompt": _prompt(r), "loss": s / n if n else None, "tokens": n} for r, s, n in zip(rows, sums, counts)]
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return {"score": loss, "perplexity": perplexity, "ci": [lo, hi], "items_scored": len(kept), "tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "items": items}


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
