"""Scoring models on data: batched greedy generation and exact-match scoring."""

from __future__ import annotations

import re


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 32,
             stop: str | None = "\n") -> list[str]:
    """Greedy completions of `prompts`, batched with left padding and the KV cache; each is cut at
    the first `stop` string (the end-of-sequence token always stops)."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    device = next(model.parameters()).device
    outputs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i: i + batch_size], return_tensors="pt", padding=True)  # as in training
            with torch.no_grad():
                ids = model.generate(**{k: v.to(device) for k, v in enc.items()}, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            for row in ids[:, enc["input_ids"].shape[1]:]:
                text = tokenizer.decode(row, skip_special_tokens=True)
                outputs.append(text.split(stop)[0] if stop else text)
    finally:
        tokenizer.padding_side = side
    return outputs


def normalise(text: str) -> str:
    """Collapse whitespace and trim: ' print(4 *  12)\\n' -> 'print(4 * 12)'."""
    return re.sub(r"\s+", " ", text).strip()


def exact_match(predictions: list[str], references: list[str]) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return 0.0
    return sum(normalise(p) == normalise(r) for p, r in zip(predictions, references)) / len(predictions)
