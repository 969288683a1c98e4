"""`loramix.core.data`: the three JSONL row formats and builtin:NAME[:SPLIT], every refusal
naming its file and line, the digest, and tokenization on a real (built-in-code) tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loramix.core import data
from loramix.core.data import IGNORE, Dataset, check_row, collate, kind, load, tokenize
from loramix.core.errors import EXIT_USAGE, InputError
from loramix.zoo.skills import SKILLS, rows

PROMPT = {"prompt": "Problem: 2 + 2\nAnswer:", "completion": " 4"}
TEXT = {"text": "Tom has 3 apples."}
MESSAGES = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def jsonl(path: Path, *rows: dict) -> Path:
    return write(path, *(json.dumps(r) for r in rows))


def refused(source, *needles, limit=None) -> InputError:
    """load() raises InputError (exit code 2) whose message holds every needle."""
    with pytest.raises(InputError) as info:
        load(str(source), limit)
    error = info.value
    assert error.exit_code == EXIT_USAGE == 2
    for needle in needles:
        assert str(needle) in error.message, f"{needle!r} not in {error.message!r}"
    assert str(error) == error.message
    return error


# --- reading rows ----------------------------------------------------------------------------------


def test_each_row_format_loads(tmp_path):
    answer = dict(PROMPT, answer=4)
    f = jsonl(tmp_path / "d.jsonl", PROMPT, TEXT, MESSAGES, answer)
    ds = load(str(f))
    assert isinstance(ds, Dataset) and ds.source == str(f)
    assert ds.rows == [PROMPT, TEXT, MESSAGES, answer]
    assert [kind(r) for r in ds.rows] == ["prompt", "text", "messages", "prompt"]


@pytest.mark.parametrize("row", [PROMPT, TEXT, MESSAGES], ids=["prompt", "text", "messages"])
def test_a_file_of_one_format(tmp_path, row):
    f = jsonl(tmp_path / "d.jsonl", row, row, row)
    assert load(str(f)).rows == [row] * 3


def test_unicode_and_extra_fields_survive(tmp_path):
    row = {"prompt": "Zoë a 3 pommes — combien ?", "completion": " 3 ✓", "answer": "3", "id": 7}
    f = jsonl(tmp_path / "d.jsonl", row)
    assert load(str(f)).rows == [row]


def test_blank_lines_are_skipped(tmp_path):
    f = write(tmp_path / "d.jsonl", "", json.dumps(PROMPT), "   ", "\t", json.dumps(TEXT), "", "")
    assert load(str(f)).rows == [PROMPT, TEXT]


def test_crlf_line_endings(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes((json.dumps(PROMPT) + "\r\n" + json.dumps(TEXT) + "\r\n").encode())
    assert load(str(f)).rows == [PROMPT, TEXT]


def test_limit_is_honoured(tmp_path):
    many = [{"text": f"row {i}"} for i in range(10)]
    f = jsonl(tmp_path / "d.jsonl", *many)
    assert load(str(f), 3).rows == many[:3]
    assert load(str(f), 1).rows == many[:1]
    assert load(str(f), 10).rows == many
    assert load(str(f), 50).rows == many
    assert load(str(f)).rows == many


def test_limit_stops_before_a_bad_line(tmp_path):
    f = write(tmp_path / "d.jsonl", json.dumps(TEXT), json.dumps(TEXT), "{broken")
    assert load(str(f), 2).rows == [TEXT, TEXT]
    refused(f, f"{f}:3", limit=3)


def test_builtin_sources():
    ds = load("builtin:math", 4)
    assert ds.source == "builtin:math" and ds.rows == rows("math", "train", 4)
    assert load("builtin:math:train", 4).rows == ds.rows
    assert load("builtin:math-code:eval", 3).rows == rows("math-code", "eval", 3)
    assert load("builtin:units:eval").rows == rows("units", "eval")
    assert len(load("builtin:words").rows) == 8000 and len(load("builtin:math").rows) == 4000


def test_builtin_rows_pass_the_row_check():
    for name in SKILLS:
        for row in load(f"builtin:{name}:eval", 20).rows:
            assert check_row(row, "here") is row and kind(row) == "prompt"


# --- the digest ------------------------------------------------------------------------------------


def test_digest_names_the_rows(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", PROMPT, TEXT)
    digest = load(str(a)).digest
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert load(str(a)).digest == digest  # stable
    # the same rows written differently (spacing, key order, blank lines, another file): same digest
    b = write(
        tmp_path / "b.jsonl",
        '{"completion": " 4",   "prompt": "Problem: 2 + 2\\nAnswer:"}',
        "",
        '{ "text" : "Tom has 3 apples." }',
    )
    assert load(str(b)).digest == digest
    assert Dataset("elsewhere", [PROMPT, TEXT]).digest == digest


@pytest.mark.parametrize(
    "change",
    [
        [dict(PROMPT, completion=" 5"), TEXT],
        [PROMPT, {"text": "Tom has 3 apples"}],
        [dict(PROMPT, answer=4), TEXT],
        [TEXT, PROMPT],
        [PROMPT],
        [PROMPT, TEXT, TEXT],
    ],
    ids=["completion", "text", "added-field", "order", "fewer", "more"],
)
def test_digest_changes_with_any_row(change):
    assert Dataset("d", change).digest != Dataset("d", [PROMPT, TEXT]).digest


def test_builtin_digest_is_reproducible():
    assert load("builtin:code", 30).digest == load("builtin:code", 30).digest
    assert load("builtin:code", 30).digest != load("builtin:code", 31).digest
    assert load("builtin:code", 30).digest != load("builtin:math-code", 30).digest


# --- refusals --------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    error = refused(tmp_path / "nope.jsonl", "nope.jsonl", "no such file")
    assert "builtin:" in error.hint


def test_a_folder_is_not_a_file(tmp_path):
    refused(tmp_path, str(tmp_path), "is a folder, not a JSONL file")


def test_empty_file(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    error = refused(f, f"{f}: no rows")
    assert "prompt" in error.hint and "text" in error.hint and "messages" in error.hint


def test_only_blank_lines(tmp_path):
    refused(write(tmp_path / "blank.jsonl", "", "   ", "\t", ""), "blank.jsonl", "no rows")


def test_malformed_json_names_file_and_line(tmp_path):
    f = write(tmp_path / "f.jsonl", json.dumps(PROMPT), "", '{"prompt": "a", "completion": ', json.dumps(TEXT))
    error = refused(f, f"{f}:3", "not JSON")
    assert f"{f}:1" not in error.message and f"{f}:4" not in error.message


def test_malformed_json_on_the_first_line(tmp_path):
    refused(
        write(tmp_path / "f.jsonl", "prompt, completion", json.dumps(PROMPT)), f"{tmp_path / 'f.jsonl'}:1", "not JSON"
    )


def test_two_objects_on_one_line(tmp_path):
    refused(write(tmp_path / "f.jsonl", json.dumps(TEXT) + " " + json.dumps(TEXT)), "f.jsonl:1", "not JSON")


@pytest.mark.parametrize(
    "line, what",
    [
        ("[1, 2]", "list"),
        ('"text"', "str"),
        ("42", "int"),
        ("null", "NoneType"),
        ("true", "bool"),
    ],
)
def test_a_line_that_is_not_an_object(tmp_path, line, what):
    f = write(tmp_path / "f.jsonl", json.dumps(TEXT), line)
    refused(f, f"{f}:2", "must be a JSON object", what)


def test_prompt_without_completion(tmp_path):
    f = jsonl(tmp_path / "f.jsonl", PROMPT, {"prompt": "hi"})
    refused(f, f"{f}:2", '"prompt" but no "completion"')


def test_completion_without_prompt(tmp_path):
    f = jsonl(tmp_path / "f.jsonl", {"completion": "hi"})
    refused(f, f"{f}:1", "exactly one of", "completion")


@pytest.mark.parametrize(
    "row",
    [
        dict(PROMPT, text="x"),
        dict(TEXT, **MESSAGES),
        dict(PROMPT, **MESSAGES),
        dict(PROMPT, text="x", **MESSAGES),
    ],
)
def test_a_row_with_two_formats(tmp_path, row):
    f = jsonl(tmp_path / "f.jsonl", TEXT, TEXT, row)
    error = refused(f, f"{f}:3", "exactly one of")
    for field in row:
        assert field in error.message.split("(found")[1]


@pytest.mark.parametrize("row", [{}, {"answer": 3}, {"input": "a", "output": "b"}])
def test_a_row_with_no_format(tmp_path, row):
    f = jsonl(tmp_path / "f.jsonl", row)
    refused(f, f"{f}:1", "exactly one of", *(row or ["no fields"]))


@pytest.mark.parametrize(
    "row, field",
    [
        ({"prompt": 1, "completion": "a"}, "prompt"),
        ({"prompt": "a", "completion": 4}, "completion"),
        ({"prompt": "a", "completion": None}, "completion"),
        ({"prompt": ["a"], "completion": "b"}, "prompt"),
        ({"text": 3}, "text"),
        ({"text": {"a": 1}}, "text"),
    ],
)
def test_a_field_that_is_not_a_string(tmp_path, row, field):
    f = jsonl(tmp_path / "f.jsonl", TEXT, row)
    refused(f, f"{f}:2", f'"{field}" must be a string')


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_an_empty_text(tmp_path, text):
    f = jsonl(tmp_path / "f.jsonl", {"text": text})
    refused(f, f"{f}:1", '"text" is empty')


@pytest.mark.parametrize(
    "messages, needle",
    [
        ([], '"messages" must be a non-empty list'),
        ("hello", '"messages" must be a non-empty list'),
        ({"role": "user", "content": "x"}, '"messages" must be a non-empty list'),
        (None, '"messages" must be a non-empty list'),
        (["hello"], 'messages[0] needs string "role" and "content"'),
        ([{"role": "user"}], 'messages[0] needs string "role" and "content"'),
        ([{"content": "x"}], 'messages[0] needs string "role" and "content"'),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": 5}], "messages[1]"),
        ([{"role": "user", "content": "x"}, {"role": None, "content": "y"}], "messages[1]"),
    ],
)
def test_bad_messages(tmp_path, messages, needle):
    f = jsonl(tmp_path / "f.jsonl", MESSAGES, {"messages": messages})
    refused(f, f"{f}:2", needle)


def test_non_utf8_bytes(tmp_path):
    f = tmp_path / "latin.jsonl"
    f.write_bytes(json.dumps(TEXT).encode() + b"\n" + '{"text": "café"}'.encode("latin-1") + b"\n")
    refused(f, str(f), "not UTF-8")


def test_non_utf8_bytes_name_the_line(tmp_path):
    f = tmp_path / "latin.jsonl"
    f.write_bytes((json.dumps(TEXT) + "\n").encode() * 3 + '{"text": "café"}'.encode("latin-1") + b"\n")
    refused(f, f"{f}:4", "not UTF-8")


def test_binary_file(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(bytes([0x80, 0xFF, 0xFE, 0x00]) * 64)
    refused(f, str(f), "not UTF-8")


def test_unknown_builtin_skill_lists_the_skills():
    error = refused("builtin:maths", "builtin:maths", "no built-in skill 'maths'")
    for name in SKILLS:
        assert name in error.hint
    assert error.hint == (
        "built-in skills: math, code, math-code, units, words, manual, instruct, qa-bot, math-q, math-ask, math-io"
    )


def test_empty_builtin_name():
    refused("builtin:", "no built-in skill ''")


@pytest.mark.parametrize(
    "source, split",
    [
        ("builtin:math:test", "test"),
        ("builtin:code:Eval", "Eval"),
        ("builtin:math:eval:2", "eval:2"),
    ],
)
def test_unknown_split(source, split):
    error = refused(source, source, f"no split {split!r}")
    assert error.hint == "splits: train, eval"


@pytest.mark.parametrize("limit", [0, -1, -100])
def test_limit_below_one(tmp_path, limit):
    f = jsonl(tmp_path / "d.jsonl", TEXT)
    for source in (f, "builtin:math"):
        refused(source, f"--limit {limit}", "at least 1", limit=limit)


def test_check_row_names_where():
    with pytest.raises(InputError, match=r"^somewhere:7: has \"prompt\" but no \"completion\"$"):
        check_row({"prompt": "a"}, "somewhere:7")
    assert check_row(PROMPT, "x") is PROMPT


# --- tokenization ----------------------------------------------------------------------------------

WORDS = ["<pad>", "<eos>", "<unk>", "add", "two", "and", "three", "=", "five", "user", "assistant", ":"]
ID = {w: i for i, w in enumerate(WORDS)}
PAD, EOS = ID["<pad>"], ID["<eos>"]
SUM = {"prompt": "add two and three =", "completion": " five"}
CHAT = {"messages": [{"role": "user", "content": "add two and three"}, {"role": "assistant", "content": "five"}]}


def ids(text: str) -> list[int]:
    return [ID[w] for w in text.split()]


def build_tokenizer(folder: Path, eos: bool = True, chat_template: str | None = None):
    """A word-level tokenizer built in code, saved, and loaded back the way a base model's is."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(dict(ID), unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"eos_token": "<eos>"} if eos else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", **special)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = build_tokenizer(tmp_path_factory.mktemp("tok"))
    assert tok.eos_token_id == EOS and tok.pad_token_id == PAD and not tok.chat_template
    assert tok("add two", add_special_tokens=False).input_ids == ids("add two")
    return tok


def test_prompt_tokens_carry_no_loss(tokenizer):
    input_ids, labels = tokenize(SUM, tokenizer, 64)
    assert input_ids == ids("add two and three = five") + [EOS]
    assert labels == [IGNORE] * 5 + [ID["five"], EOS]


def test_a_longer_completion(tokenizer):
    input_ids, labels = tokenize({"prompt": "add", "completion": " two and three"}, tokenizer, 64)
    assert input_ids == ids("add two and three") + [EOS]
    assert labels == [IGNORE] + ids("two and three") + [EOS]


def test_text_rows_are_fully_labelled(tokenizer):
    input_ids, labels = tokenize({"text": "two and three = five"}, tokenizer, 64)
    assert input_ids == ids("two and three = five") + [EOS]
    assert labels == input_ids


def test_extra_fields_do_not_change_tokens(tokenizer):
    assert tokenize(dict(SUM, answer=5), tokenizer, 64) == tokenize(SUM, tokenizer, 64)


def test_max_length_truncates(tokenizer):
    assert tokenize(SUM, tokenizer, 6) == (ids("add two and three = five"), [IGNORE] * 5 + [ID["five"]])
    assert tokenize(SUM, tokenizer, 3) == (ids("add two and"), [IGNORE] * 3)
    assert tokenize(SUM, tokenizer, 7) == tokenize(SUM, tokenizer, 1000)
    assert tokenize({"text": "two and three"}, tokenizer, 2) == (ids("two and"), ids("two and"))
    for n in range(1, 9):
        input_ids, labels = tokenize(SUM, tokenizer, n)
        assert len(input_ids) == len(labels) == min(n, 7)


def test_no_eos_token_appends_nothing(tmp_path):
    tok = build_tokenizer(tmp_path / "tok", eos=False)
    assert tok.eos_token_id is None
    assert tokenize(SUM, tok, 64) == (ids("add two and three = five"), [IGNORE] * 5 + [ID["five"]])
    assert tokenize({"text": "add two"}, tok, 64) == (ids("add two"), ids("add two"))


def test_messages_need_a_chat_template(tokenizer):
    with pytest.raises(InputError) as info:
        tokenize(CHAT, tokenizer, 64)
    assert info.value.exit_code == 2
    assert "chat template" in info.value.message and '"messages"' in info.value.message
    assert "prompt" in info.value.hint


MARKED = (
    "{% for m in messages %}{{ m['role'] }} : {% if m['role'] == 'assistant' %}{% generation %}"
    "{{ m['content'] }} <eos>{% endgeneration %}{% else %}{{ m['content'] }}{% endif %} {% endfor %}"
)
UNMARKED = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"


def test_messages_learn_only_the_assistant_turns_a_template_marks(tmp_path):
    tok = build_tokenizer(tmp_path / "tok", chat_template=MARKED)
    input_ids, labels = tokenize(CHAT, tok, 64)
    assert input_ids == ids("user : add two and three assistant : five") + [EOS]
    assert labels == [IGNORE] * 8 + [ID["five"], EOS]
    assert tokenize(CHAT, tok, 9) == (input_ids[:9], labels[:9])


def test_messages_learn_everything_when_the_template_marks_nothing(tmp_path):
    tok = build_tokenizer(tmp_path / "tok", chat_template=UNMARKED)
    input_ids, labels = tokenize(CHAT, tok, 64)
    assert input_ids == ids("user : add two and three assistant : five")
    assert labels == input_ids


# --- collate ---------------------------------------------------------------------------------------


def test_collate_pads_right():
    batch = collate([([5, 6, 7], [IGNORE, 6, 7]), ([8, 9, 10, 11, 3], [8, 9, 10, 11, 3]), ([4], [4])], pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long and t.shape == (3, 5) for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 3], [4, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, IGNORE], [8, 9, 10, 11, 3], [4] + [IGNORE] * 4]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_collate_uses_the_pad_id_given():
    batch = collate([([1], [1]), ([1, 2, 3], [IGNORE, 2, 3])], pad_id=42)
    assert batch["input_ids"].tolist() == [[1, 42, 42], [1, 2, 3]]
    assert batch["labels"].tolist() == [[1, IGNORE, IGNORE], [IGNORE, 2, 3]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]


def test_collate_of_tokenized_rows(tokenizer):
    examples = [tokenize(SUM, tokenizer, 64), tokenize({"text": "two"}, tokenizer, 64)]
    batch = collate(examples, tokenizer.pad_token_id)
    assert batch["input_ids"].tolist() == [ids("add two and three = five") + [EOS], [ID["two"], EOS] + [PAD] * 5]
    assert batch["labels"].tolist() == [[IGNORE] * 5 + [ID["five"], EOS], [ID["two"], EOS] + [IGNORE] * 5]
    assert batch["attention_mask"].sum(dim=1).tolist() == [7, 2]


# --- dump ------------------------------------------------------------------------------------------


def test_dump_round_trips(tmp_path):
    ds = Dataset("x", [PROMPT, {"text": "Zoë ✓"}, MESSAGES])
    out = tmp_path / "sub" / "out.jsonl"
    assert data.dump(ds, out) == 3
    assert load(str(out)).rows == ds.rows
    assert "Zoë ✓" in out.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]


def test_dump_failing_to_rename_leaves_nothing(tmp_path, monkeypatch):
    from loramix.core import outputs
    from loramix.core.errors import LoramixError

    def fail(out, tmp, force):
        assert tmp.is_file()  # written in full beside the output, then put in place
        raise OSError(28, "No space left on device", str(out))

    monkeypatch.setattr(outputs, "_install", fail)
    out = tmp_path / "sub" / "out.jsonl"
    with pytest.raises(LoramixError, match=r"out\.jsonl: no space left on the device"):
        data.dump(Dataset("x", [PROMPT, TEXT]), out)
    assert list(tmp_path.iterdir()) == []  # no temporary file, and the folder made for it is gone


def test_a_huge_row_costs_what_its_kept_tokens_cost():
    """A 5 MB row is cut to what --max-length can keep before it is tokenized, with the same result."""
    from loramix.core import models

    tokenizer = models.load_tokenizer(models.bundled_path())
    seen = []

    class Spy:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, text, **kw):
            seen.append(len(text))
            return tokenizer(text, **kw)

    text = "print(12 + 34) " * 350_000
    ids, _ = data.tokenize({"text": text}, Spy(), 64)
    assert len(ids) == 64 and ids == tokenizer(text[:10_000]).input_ids[:64]
    assert max(seen) <= 64 * data.CHARS_PER_TOKEN
    prompt, _ = data.tokenize({"prompt": text, "completion": text}, Spy(), 64)
    assert len(prompt) == 64 and max(seen) <= 2 * 64 * data.CHARS_PER_TOKEN  # prompt and completion, each cut
