"""The built-in skills: deterministic rows, train and eval splits that never share a
problem in any skill, completions whose arithmetic is the answer, the number words, the QA bot's
price list and the prompt formats."""

from __future__ import annotations

import dataclasses
import re

import pytest

from loramix.zoo import skills
from loramix.zoo.manual import GOODS, MANUAL, PRICES
from loramix.zoo.problems import Problem
from loramix.zoo.skills import DEFAULT_ROWS, SKILLS, SPLITS, rows, split_of, value
from loramix.zoo.words import number_word

N = 400  # rows per skill and split in the split checks: enough to meet every problem kind
ARITHMETIC = ("math", "code", "math-code", "math-q", "math-ask", "math-io")
FORMATS = {"math": ("Problem: ", "\nAnswer:"), "math-q": ("Q: ", "\nA:"), "math-ask": ("Question: ", "\nResult:")}
FORMATS["math-io"] = ("Input: ", "\nOutput:")
SENTENCE = re.compile(r" (\d+) ([a-z]+) are (\1 \* \d+) coins\.")


def keyed_rows(monkeypatch, name: str, split: str, n: int, seed: int = 0) -> list[tuple[dict, tuple]]:
    """rows(name, split, n, seed), each with the key of the generated problem behind it (the draw
    is wrapped to record prompt -> key; rows themselves carry no key)."""
    skill = SKILLS[name]
    keys: dict[str, set] = {}

    def draw(rng):
        p = skill.draw(rng)
        keys.setdefault(skill.prompt(p), set()).add(p.key)
        return p

    with monkeypatch.context() as m:
        m.setitem(SKILLS, name, dataclasses.replace(skill, draw=draw))
        out = rows(name, split, n, seed)
    result = []
    for row in out:
        assert len(keys[row["prompt"]]) == 1, f"{name}: one prompt, several problems: {keys[row['prompt']]}"
        result.append((row, next(iter(keys[row["prompt"]]))))
    return result


@pytest.fixture(scope="module")
def keyed():
    """{(skill, split): [(row, key), ...]} for every skill and split."""
    mp = pytest.MonkeyPatch()
    try:
        return {(name, split): keyed_rows(mp, name, split, N) for name in SKILLS for split in SPLITS}
    finally:
        mp.undo()


def program_expr(completion: str) -> str:
    match = re.fullmatch(r" print\((.+)\)", completion)
    assert match, f"not a program: {completion!r}"
    return match.group(1)


def arithmetic_of(name: str, completion: str) -> str:
    if name in ("code", "math-code"):
        return program_expr(completion)
    if name in ("instruct", "qa-bot"):
        match = SENTENCE.fullmatch(completion)
        assert match, f"not an answer sentence: {completion!r}"
        return match.group(3)
    assert completion.startswith(" ") and "print" not in completion, completion
    return completion[1:]


# --- the skills and their splits ---------------------------------------------------------------


def test_the_skills_and_which_is_held_out():
    assert list(SKILLS) == [
        "math",
        "code",
        "math-code",
        "units",
        "words",
        "manual",
        "instruct",
        "qa-bot",
        "math-q",
        "math-ask",
        "math-io",
    ]
    assert SPLITS == ("train", "eval")
    assert [n for n, s in SKILLS.items() if s.composite] == ["math-code", "qa-bot", "math-io"]
    assert all(s.summary for s in SKILLS.values())


def test_every_row_lands_in_its_split(keyed):
    for (name, split), pairs in keyed.items():
        assert len(pairs) == N
        wrong = [(row["prompt"], key) for row, key in pairs if split_of(key) != split]
        assert not wrong, f"{name}:{split} holds problems of the other split: {wrong[:3]}"


def test_train_and_eval_never_share_a_prompt(keyed):
    for name in SKILLS:
        train = {row["prompt"] for row, _ in keyed[name, "train"]}
        evals = {row["prompt"] for row, _ in keyed[name, "eval"]}
        assert train and evals and not train & evals, name


def test_eval_problems_are_never_trained_on_by_any_skill(keyed):
    train_keys = {key for name in SKILLS for _, key in keyed[name, "train"]}
    for name in SKILLS:
        eval_keys = {key for _, key in keyed[name, "eval"]}
        assert len(eval_keys) > N // 2, name
        assert not eval_keys & train_keys, f"{name}: eval problems trained on: {sorted(eval_keys & train_keys)[:3]}"


def test_the_held_out_composite_shares_no_problem_or_story_with_math_or_code(keyed):
    composite = {key for _, key in keyed["math-code", "eval"]}
    for name in ("math", "code"):
        assert not composite & {key for _, key in keyed[name, "train"]}, name
    # the same problems do reach math and code training in their train split
    assert {key for _, key in keyed["math-code", "train"]} & {key for _, key in keyed["math", "train"]}
    # no word problem of the composite eval split is a math training story
    stories = {row["prompt"].removeprefix("Problem: ").removesuffix("\nAnswer:") for row, _ in keyed["math", "train"]}
    composite_stories = {
        row["prompt"].removeprefix("Problem: ").removesuffix("\nCode:") for row, _ in keyed["math-code", "eval"]
    }
    assert all(s and "\n" not in s for s in stories | composite_stories)
    assert not stories & composite_stories


def test_split_of_depends_on_the_key_only():
    keys = [("mul", a, b) for a in range(2, 13) for b in range(2, 21)]
    splits = [split_of(k) for k in keys]
    assert splits == [split_of(tuple(k)) for k in keys]
    assert set(splits) == {"train", "eval"}
    share = splits.count("eval") / len(splits)
    assert 0.1 < share < 0.3, share  # one in five, roughly


def test_every_problem_kind_reaches_both_splits(keyed):
    for name in SKILLS:
        for split in SPLITS:
            kinds = {key[0] for _, key in keyed[name, split]}
            expected = {
                "units": {"unit_down", "unit_up"},
                "words": {"words"},
                "manual": {"manual"},
                "qa-bot": {"manual"},
                "instruct": {"noted"},
            }.get(name, {"mul", "add", "sub", "div", "mul_sub", "mul_add"})
            assert kinds == expected, (name, split, kinds)


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SKILLS))
def test_rows_are_deterministic(name):
    for split in SPLITS:
        first = rows(name, split, 50)
        assert first == rows(name, split, 50)
        assert rows(name, split, 20) == first[:20]  # a prefix: --limit picks the first rows
        assert first == rows(name, split, 50, seed=0)


def test_another_seed_gives_other_rows_in_the_same_splits(monkeypatch, keyed):
    for name in SKILLS:
        for split in SPLITS:
            other = keyed_rows(monkeypatch, name, split, 100, seed=1)
            assert [r for r, _ in other] != [r for r, _ in keyed[name, split][:100]], (name, split)
            assert all(split_of(key) == split for _, key in other), (name, split)
        eval_keys = {key for _, key in keyed_rows(monkeypatch, name, "eval", 100, seed=7)}
        assert not eval_keys & {key for _, key in keyed[name, "train"]}, name


# --- the rows themselves ---------------------------------------------------------------------------


def test_every_row_has_prompt_completion_and_answer(keyed):
    for pairs in keyed.values():
        for row, _ in pairs:
            assert set(row) == {"prompt", "completion", "answer"}, row
            assert isinstance(row["prompt"], str) and isinstance(row["completion"], str)
            assert isinstance(row["answer"], int) and not isinstance(row["answer"], bool), row
            assert row["answer"] >= 0, row


def test_the_completion_computes_the_answer(keyed):
    for (name, _split), pairs in keyed.items():
        for row, _key in pairs:
            expr = arithmetic_of(name, row["completion"])
            assert re.fullmatch(r"\d+( [-+*/] \d+)+", expr), (name, row)
            assert value(expr) == row["answer"], (name, row)
            # Python itself agrees (a division answer is exact)
            assert eval(expr) == row["answer"], (name, row)


def test_the_expression_is_the_problem_behind_it(keyed):
    ops = {"mul": "*", "add": "+", "sub": "-", "div": "/"}
    for name in ARITHMETIC:
        for split in SPLITS:
            for row, key in keyed[name, split]:
                kind, *numbers = key
                expr = arithmetic_of(name, row["completion"])
                if kind in ops:
                    assert expr == f"{numbers[0]} {ops[kind]} {numbers[1]}", (row, key)
                else:
                    op = {"mul_sub": "-", "mul_add": "+"}[kind]
                    assert expr == f"{numbers[0]} * {numbers[1]} {op} {numbers[2]}", (row, key)
                for n in numbers:  # the numbers are in the question
                    assert re.search(rf"\b{n}\b", row["prompt"]), (row, key)


def test_prompts_and_completions_by_skill():
    math, code, composite = rows("math", "eval", 30), rows("code", "eval", 30), rows("math-code", "eval", 30)
    units, words = rows("units", "eval", 30), rows("words", "eval", 30)
    assert all(r["prompt"].startswith("Problem: ") and r["prompt"].endswith("\nAnswer:") for r in math + units)
    assert all(r["prompt"].startswith("Task: ") and r["prompt"].endswith("\nCode:") for r in code)
    assert all(r["prompt"].startswith("Problem: ") and r["prompt"].endswith("\nCode:") for r in composite)
    assert all(r["prompt"].startswith("Words: ") and r["prompt"].endswith("\nDigits:") for r in words)
    assert all(r["completion"].startswith(" print(") for r in code + composite)
    assert not any("print" in r["completion"] for r in math + units + words)


def test_word_prompts_spell_out_the_numbers():
    for row in rows("words", "train", 100):
        a, op, b = row["completion"].split()
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        assert row["prompt"] == f"Words: {number_word(int(a))} {word} {number_word(int(b))}\nDigits:"


@pytest.mark.parametrize("name", list(SKILLS))
def test_default_sizes_are_delivered_with_distinct_prompts(name):
    assert DEFAULT_ROWS == {"train": 4000, "eval": 500}
    expected = {"train": 8000 if name in ("words", "manual") else 4000, "eval": 500}
    for split in SPLITS:
        out = rows(name, split)
        assert len(out) == expected[split] == SKILLS[name].default_rows(split), (name, split)
        assert len({r["prompt"] for r in out}) == len(out), (name, split)


# --- the QA bot: a price list, an answer format, and the composite that needs both ---------------


def price_of(row: dict) -> tuple[str, int, int]:
    """(objects, number, price) of a price question's row, read from its completion."""
    match = SENTENCE.fullmatch(row["completion"]) or re.fullmatch(r" (\d+) \* (\d+)", row["completion"])
    assert match, row
    if match.re is SENTENCE:
        return match.group(2), int(match.group(1)), int(match.group(3).split(" * ")[1])
    objects = next(o for o in GOODS if re.search(rf"\b{match.group(1)} {o}\b", row["prompt"]))
    return objects, int(match.group(1)), int(match.group(2))


def test_the_manual_is_a_fixed_price_list():
    assert set(MANUAL) == set(GOODS) and "coins" not in GOODS  # coins are the currency
    assert all(p in PRICES for p in MANUAL.values())
    assert len(set(MANUAL.values())) > len(MANUAL) // 2  # not one price for everything
    for name in ("manual", "qa-bot"):
        for split in SPLITS:
            for row in rows(name, split, 200):
                objects, number, price = price_of(row)
                assert price == MANUAL[objects], row
                assert f"{number} {objects}" in row["prompt"] and re.findall(r"\d+", row["prompt"]) == [str(number)], (
                    row
                )
    seen = {price_of(r)[0] for r in rows("manual", "train", 400)}
    assert seen == set(GOODS)  # every price is taught


def test_instruct_gives_the_price_and_answers_with_a_sentence():
    noted = rows("instruct", "train", 300)
    other_prices = 0
    for row in noted:
        objects, number, price = price_of(row)
        assert row["prompt"].startswith(f"User: The {objects} are {price} coins each. ")
        assert row["prompt"].endswith("\nAssistant:") and row["answer"] == number * price
        other_prices += price != MANUAL[objects]
    assert other_prices > 0.8 * len(noted)  # the notes' prices are random, not the manual's


def test_the_qa_bot_composite_needs_both_skills():
    composite = rows("qa-bot", "eval", 200)
    manual = {r["prompt"].removeprefix("Manual: ").removesuffix("\nAnswer:") for r in rows("manual", "train")}
    noted = rows("instruct", "train")
    for row in composite:
        question = row["prompt"].removeprefix("User: ").removesuffix("\nAssistant:")
        assert row["prompt"].startswith("User: ") and "each" not in question  # no price given
        assert question not in manual  # a held-out problem, not a trained question in another format
        assert SENTENCE.fullmatch(row["completion"])  # instruct's format
    # the format is instruct's and the price is the manual's: neither skill's rows hold both
    assert all(r["prompt"].startswith("User: The ") for r in noted)
    assert all(re.fullmatch(r" \d+ \* \d+", r["completion"]) for r in rows("manual", "train", 200))


# --- the prompt-format experiment ----------------------------------------------------------------


def test_the_formats_ask_maths_problems_in_other_words(keyed):
    for name, (before, after) in FORMATS.items():
        for split in SPLITS:
            for row, _ in keyed[name, split]:
                assert row["prompt"].startswith(before) and row["prompt"].endswith(after), (name, row)
                assert row["completion"] == " " + arithmetic_of(name, row["completion"])
    trained = {row["prompt"].removeprefix("Problem: ").removesuffix("\nAnswer:") for row, _ in keyed["math", "train"]}
    unseen = [row["prompt"].removeprefix("Input: ").removesuffix("\nOutput:") for row, _ in keyed["math-io", "eval"]]
    assert not trained & set(unseen)  # the unseen format's eval stories are never math training stories


# --- number words and value() ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (19, "nineteen"),
        (20, "twenty"),
        (40, "forty"),
        (42, "forty two"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (105, "one hundred five"),
        (110, "one hundred ten"),
        (340, "three hundred forty"),
        (999, "nine hundred ninety nine"),
    ],
)
def test_number_word(n, words):
    assert number_word(n) == words


def test_value_of_generated_expressions():
    assert value("4 * 12") == 48
    assert value("4 * 12 - 3") == 45
    assert value("2 + 3 * 4") == 14
    assert value("84 / 7") == 12 and isinstance(value("84 / 7"), int)
    assert value("7 / 2") == 3.5
    assert value(" print(4 * 12)".removeprefix(" print")) == 48


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "open('f')",
        "x",
        "1 + a",
        "2.5 * 2",
        "1e3",
        "1; 2",
        "1 % 2",
        "[1, 2]",
        "print(1)",
        "4 * 12\n",
        "True",
    ],
)
def test_value_refuses_anything_but_digits_and_operators(expr):
    with pytest.raises(ValueError, match="not a generated expression"):
        value(expr)


# --- impossible requests ---------------------------------------------------------------------------


def test_a_split_that_cannot_fill_the_request_raises(monkeypatch):
    key = ("add", 1, 1)
    only = Problem(key, "1 + 1", "one problem only")
    monkeypatch.setitem(
        SKILLS, "one", skills.Skill("one", "one problem", lambda rng: only, lambda p: p.text, lambda p: f" {p.expr}")
    )
    assert rows("one", split_of(key), 1) == [{"prompt": "one problem only", "completion": " 1 + 1", "answer": 2}]
    with pytest.raises(ValueError, match=rf"builtin:one:{split_of(key)} has fewer than 2 distinct rows"):
        rows("one", split_of(key), 2)
    other = "eval" if split_of(key) == "train" else "train"
    with pytest.raises(ValueError, match="fewer than 1 distinct rows"):
        rows("one", other, 1)


def test_no_such_split_raises():
    with pytest.raises(ValueError, match="builtin:math:test has fewer than 3 distinct rows"):
        rows("math", "test", 3)
