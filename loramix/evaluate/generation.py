"""Batched greedy generation: prompts as token ids, left-padded batches, the KV cache, stop strings.

Prompts are sorted by length before batching (less padding) and the outputs put back in order.
Left padding with an attention mask gives each row the same positions and the same greedy text as
generating it alone (tests/test_generation.py checks this on the bundled model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Generated:
    text: str  # the completion, cut before the first stop string
    tokens: int  # tokens generated for it (up to the end-of-sequence token or the stop)


def prompt_ids(
    rows: list[dict], tokenizer, prefix: str = "", chat: bool = False, label: str = "data"
) -> list[list[int]]:
    """Token ids of each row's prompt as the model sees it: `prefix` (few-shot examples) + prompt,
    through the chat template when `chat` is set or the row is a "messages" row."""
    from loramix.core.errors import InputError

    out = []
    for number, row in enumerate(rows, 1):
        try:
            if "messages" in row:
                out.append(_chat_ids(tokenizer, prompt_messages(row["messages"]), prefix))
            elif chat:
                out.append(_chat_ids(tokenizer, [{"role": "user", "content": row["prompt"]}], prefix))
            else:
                out.append(list(tokenizer(prefix + row["prompt"]).input_ids))
        except Exception as e:  # a chat template that rejects the conversation, say
            raise InputError(f"{label}: row {number}: the prompt cannot be rendered ({type(e).__name__}: {e})")
    return out


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation up to the final assistant turn (the turn to generate)."""
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def _chat_ids(tokenizer, messages: list[dict], prefix: str) -> list[int]:
    """The conversation through the chat template, `prefix` leading the first user message."""
    if prefix:
        at = next((i for i, m in enumerate(messages) if m["role"] == "user"), 0)
        messages = messages[:at] + [dict(messages[at], content=prefix + messages[at]["content"])] + messages[at + 1 :]
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    return list(out["input_ids"])


def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int = 64,
    batch_size: int = 32,
    stops: tuple[str, ...] = (),
    on_batch: Callable[[int], None] = lambda n: None,
) -> list[Generated]:
    """Greedy completions of token-id prompts in left-padded batches; each stops at the
    end-of-sequence token or the first of `stops` (and is cut before it). With several processes
    the batches (the same ones a single process makes) are dealt out among them."""
    from loramix.core import dist

    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    results: list[Generated | None] = [None] * len(prompts)
    criteria = stop_criteria(tokenizer, stops)
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def one(chunk: list[int]) -> list[Generated]:
        out = _batch(model, tokenizer, [prompts[i] for i in chunk], max_new_tokens, stops, criteria)
        on_batch(len(chunk))
        return out

    for chunk, generated in zip(chunks, dist.map_parts(one, chunks)):
        for i, gen in zip(chunk, generated):
            results[i] = gen
    return results  # type: ignore[return-value]


def stop_criteria(tokenizer, stops: tuple[str, ...]):
    """transformers' stop-string check, built once (it indexes the whole vocabulary) and reused."""
    if not stops:
        return None
    from transformers import StoppingCriteriaList, StopStringCriteria

    return StoppingCriteriaList([StopStringCriteria(tokenizer, list(stops))])


def _batch(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, stops: tuple[str, ...], criteria
) -> list[Generated]:
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # (b, width) left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    extra = {"stopping_criteria": criteria} if criteria is not None else {}
    eos = end_tokens(model, tokenizer)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
            **extra,
        )
    return [_cut(row.tolist(), tokenizer, stops, set(eos) | {pad}) for row in out[:, width:]]


def end_tokens(model, tokenizer) -> list[int]:
    """The tokenizer's end-of-sequence token and every one the model's generation config names
    (chat models end a turn with their own: <|eot_id|>, <end_of_turn>)."""
    config = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = config if isinstance(config, (list, tuple)) else [config]
    return sorted({t for t in [tokenizer.eos_token_id, *ids] if t is not None})


def _cut(new: list[int], tokenizer, stops: tuple[str, ...], ends: set[int]) -> Generated:
    """One row's new tokens up to an end token (or the padding generate() adds once a stop string
    ends the row), as text cut before the first stop string."""
    first_end = min((new.index(t) for t in ends if t in new), default=len(new))
    new = new[:first_end]
    text = tokenizer.decode(new, skip_special_tokens=True)
    cut = min((text.find(s) for s in stops if s in text), default=len(text))
    return Generated(text[:cut], len(new))
