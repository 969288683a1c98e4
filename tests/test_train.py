"""The skill-training loop on the bundled loramix-tiny (pure functions, then a short real run)."""

from __future__ import annotations

import itertools

import pytest
import torch

from loramix.core import data
from loramix.train import loop, skill
from loramix.train.skill import TrainConfig


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [loop.learning_rate(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # from the peak on
    assert lrs[-1] < 0.001 and lrs[55] == pytest.approx(0.5, abs=0.01)


def test_every_example_is_used_once_per_epoch_in_a_seeded_order():
    settings = loop.LoopSettings(lr=1e-3, batch_size=3, grad_accum=2, seed=5)
    run = loop.Run(settings, None, None, list(range(20)), [], "cpu", steps=8, steps_per_epoch=4)
    epoch0 = [x for s in range(4) for batch in loop.step_batches(run, s) for x in batch]
    epoch1 = [x for s in range(4, 8) for batch in loop.step_batches(run, s) for x in batch]
    assert sorted(epoch0) == sorted(epoch1) == list(range(20))
    assert epoch0 != epoch1  # reshuffled each epoch
    assert [len(b) for b in loop.step_batches(run, 0)] == [3, 3]
    assert epoch0 == [x for s in range(4) for batch in loop.step_batches(run, s) for x in batch]


def test_validation_split_is_seeded_and_disjoint():
    rows = list(range(100))
    tr, va = loop.split_rows(rows, 0.1, seed=1)
    assert len(va) == 10 and not set(tr) & set(va) and sorted(tr + va) == rows
    assert loop.split_rows(rows, 0.1, seed=1) == (tr, va)
    assert loop.split_rows(rows, 0.1, seed=2)[1] != va
    assert loop.split_rows(rows, 0.0, seed=1)[1] == []


def _short_run(out, **kw):
    options = dict(
        data="builtin:math", out=out, limit=256, batch_size=16, max_steps=16, rank=8, threads=1, val_fraction=0.0
    )
    options.update(kw)
    return skill.prepare(TrainConfig(**options))


@pytest.mark.slow
def test_short_run_lowers_eval_loss_and_the_adapter_reloads_in_peft(tmp_path):
    from peft import PeftModel

    from loramix.core import models

    prepared = _short_run(tmp_path / "math")
    run = prepared.run
    run.val = [data.tokenize(r, run.tokenizer, 256) for r in data.load("builtin:math:eval", 64).rows]
    before = loop.validation_loss(run)
    history = loop.fit(run, lambda *_: None)
    after = loop.validation_loss(run)
    assert after < 0.7 * before, (before, after)
    skill.save(prepared, history, tmp_path / "math", force=False)
    batch = data.collate(run.val[:4], run.tokenizer.pad_token_id)
    with torch.no_grad():
        ours = run.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        base = models.load_model(models.bundled_path(), torch.float32, "cpu")
        peft = PeftModel.from_pretrained(base, tmp_path / "math")
        theirs = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert peft.peft_config["default"].base_model_name_or_path == "loramix-tiny"


def test_text_rows_train_on_every_token(tmp_path):
    rows = tmp_path / "t.jsonl"
    rows.write_text("".join(f'{{"text": "print({i} * {i + 1})"}}\n' for i in range(40)))
    run = _short_run(tmp_path / "out", data=str(rows), max_steps=2, batch_size=8).run
    assert all(all(t != data.IGNORE for t in labels) for _, labels in run.train)
    history = loop.fit(run, lambda *_: None)
    assert len(history.loss) == 2 and history.tokens > 0


TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
    "{% endgeneration %}{% else %}{{ m['role'] }}: {{ m['content'] }}{% endif %}\n{% endfor %}"
)


def test_messages_rows_learn_only_the_assistant_turns():
    from loramix.core import models

    tokenizer = models.load_tokenizer(models.bundled_path())
    tokenizer.chat_template = TEMPLATE
    row = {
        "messages": [
            {"role": "user", "content": "Print the sum of 2 and 3."},
            {"role": "assistant", "content": "print(2 + 3)"},
        ]
    }
    ids, labels = data.tokenize(row, tokenizer, 256)
    learned = tokenizer.decode([t for t in labels if t != data.IGNORE])
    assert learned == "print(2 + 3)" and tokenizer.decode(ids).startswith("user: Print the sum")


def test_prompt_and_completion_split_where_the_whole_is_tokenized():
    from loramix.core import models

    tokenizer = models.load_tokenizer(models.bundled_path())
    prompt, completion = data.split_tokens(tokenizer, "Task: x\nCode:", " print(12)")
    assert tokenizer.decode(prompt + completion) == "Task: x\nCode: print(12)"
    assert tokenizer.decode(completion) == " print(12)"
