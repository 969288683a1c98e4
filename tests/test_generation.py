"""Batched greedy generation on the bundled model: same text as one prompt at a time."""

from __future__ import annotations

import pytest
import torch

from loramix.core import data, models
from loramix.evaluate import generation


@pytest.fixture(scope="module")
def tiny():
    path = models.bundled_path()
    return models.load_model(path, torch.float32, "cpu").eval(), models.load_tokenizer(path)


def _prompts(tokenizer, n=12):
    rows = data.load("builtin:math:eval", n).rows + data.load("builtin:code:eval", n).rows
    return generation.prompt_ids(rows, tokenizer)


@pytest.mark.slow
def test_batched_generation_equals_one_prompt_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    assert len({len(p) for p in prompts}) > 3  # lengths differ, so rows are padded
    batched = generation.generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=8)
    single = generation.generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=1)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.tokens for g in batched] == [g.tokens for g in single]
    plain = []
    for p in prompts[:4]:  # and the same as transformers' own generate() on the unpadded prompt
        ids = model.generate(
            input_ids=torch.tensor([p]),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = ids[0, len(p) :].tolist()
        new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        plain.append(tokenizer.decode(new, skip_special_tokens=True))
    assert [g.text for g in batched[:4]] == plain


def test_stop_strings_cut_the_text_and_end_the_row(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer, 4)
    free = generation.generate(model, tokenizer, prompts, max_new_tokens=24, batch_size=8)
    stopped = generation.generate(model, tokenizer, prompts, max_new_tokens=24, batch_size=8, stops=("\n",))
    with_newline = [i for i, g in enumerate(free) if "\n" in g.text]
    assert with_newline  # the untrained base runs on past the line
    for i in with_newline:
        assert stopped[i].text == free[i].text.split("\n")[0] and stopped[i].tokens < free[i].tokens
    assert all("\n" not in g.text for g in stopped)


def test_order_is_kept_and_progress_counts_items(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer, 5)
    done = []
    out = generation.generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=3, on_batch=done.append)
    alone = generation.generate(model, tokenizer, prompts[7:8], max_new_tokens=4, batch_size=1)
    assert out[7].text == alone[0].text and sum(done) == len(prompts) == 10 and max(done) == 3


def test_prompt_ids_with_a_few_shot_prefix_and_messages(tiny):
    _, tokenizer = tiny
    row = {"prompt": "Problem: 2 + 2?\nAnswer:", "completion": " 2 + 2"}
    plain, prefixed = (
        generation.prompt_ids([row, row], tokenizer, prefix="")[0],
        generation.prompt_ids([row], tokenizer, prefix="Q\n")[0],
    )
    assert prefixed[-len(plain) + 1 :] == plain[1:] and len(prefixed) > len(plain)  # BOS, then the prefix
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert generation.prompt_messages(messages) == messages[:1]
