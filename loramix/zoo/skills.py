"""The built-in skills behind `builtin:NAME[:SPLIT]`: deterministic generators of
{"prompt", "completion", "answer"} rows with train and eval splits that never share a problem.

- math:      a word problem -> the arithmetic that answers it      ("4 * 12")
- code:      an instruction naming the operations -> a program      ("print(4 * 12)")
- math-code: a word problem -> a program (the held-out composite: math and code together)
- units:     a unit conversion -> its arithmetic                    ("7 * 1000")
- words:     numbers and an operation in words -> the same in digits ("42 + 7")
- manual:    a price question about a fixed price list ("the manual") -> its arithmetic ("7 * 3")
- instruct:  a price and a question -> the answer as a sentence       ("7 apples are 7 * 3 coins.")
- qa-bot:    a price question, no price given -> the sentence (the composite of manual and instruct)
- math-q, math-ask: math's problems in other prompt formats ("Q: ...\nA:", "Question: ...\nResult:")
- math-io:   math's problems in a format no skill trains on ("Input: ...\nOutput:"; held out)

manual, instruct and qa-bot are LoRA Soups' QA bot in small (see loramix.zoo.manual); math and its
other formats are its prompt-format experiment: LoRAs on some formats, scored on one none saw.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from loramix.zoo.manual import manual_question, noted, noted_question, sentence
from loramix.zoo.problems import Problem, arithmetic, number_words, unit_conversion

SPLITS = ("train", "eval")
EVAL_SHARE = 5  # one problem key in five belongs to the eval split
DEFAULT_ROWS = {"train": 4000, "eval": 500}  # a skill may ask for more train rows (Skill.train_rows)


@dataclass(frozen=True)
class Skill:
    name: str
    summary: str
    draw: Callable[[random.Random], Problem]
    prompt: Callable[[Problem], str]
    completion: Callable[[Problem], str]
    composite: bool = False  # a held-out task: never a training set in the benchmark
    train_rows: int = DEFAULT_ROWS["train"]  # rows of builtin:NAME without --limit

    def default_rows(self, split: str) -> int:
        return self.train_rows if split == "train" else DEFAULT_ROWS[split]


def _math_format(name: str, summary: str, before: str, after: str, composite: bool = False) -> Skill:
    return Skill(name, summary, arithmetic, lambda p: f"{before}{p.text}{after}", lambda p: f" {p.expr}", composite)


SKILLS = {
    s.name: s
    for s in (
        Skill(
            "math",
            "word problem -> its arithmetic",
            arithmetic,
            lambda p: f"Problem: {p.text}\nAnswer:",
            lambda p: f" {p.expr}",
        ),
        Skill(
            "code",
            "instruction -> Python program",
            arithmetic,
            lambda p: f"Task: {p.instruction}\nCode:",
            lambda p: f" print({p.expr})",
        ),
        Skill(
            "math-code",
            "word problem -> Python program (composite of math and code)",
            arithmetic,
            lambda p: f"Problem: {p.text}\nCode:",
            lambda p: f" print({p.expr})",
            composite=True,
        ),
        Skill(
            "units",
            "unit conversion -> its arithmetic",
            unit_conversion,
            lambda p: f"Problem: {p.text}\nAnswer:",
            lambda p: f" {p.expr}",
        ),
        Skill(
            "words",
            "numbers in words -> digits",
            number_words,
            lambda p: f"Words: {p.text}\nDigits:",
            lambda p: f" {p.expr}",
            train_rows=8000,
        ),  # 4000: ~50%
        Skill(
            "manual",
            "price question -> its arithmetic, prices from a fixed list",
            manual_question,
            lambda p: f"Manual: {p.text}\nAnswer:",
            lambda p: f" {p.expr}",
            train_rows=8000,
        ),  # 8000 rows: 95% on its eval split (an earlier draft of the generator: 17% with 4000)
        Skill(
            "instruct",
            "a price and a question -> the answer as a sentence",
            noted_question,
            lambda p: f"User: {noted(p)}\nAssistant:",
            lambda p: f" {sentence(p)}",
        ),
        Skill(
            "qa-bot",
            "price question, no price given -> the answer as a sentence (composite of manual and instruct)",
            manual_question,
            lambda p: f"User: {p.text}\nAssistant:",
            lambda p: f" {sentence(p)}",
            composite=True,
        ),
        _math_format("math-q", "word problem -> its arithmetic, as Q:/A:", "Q: ", "\nA:"),
        _math_format("math-ask", "word problem -> its arithmetic, as Question:/Result:", "Question: ", "\nResult:"),
        _math_format(
            "math-io", "word problem -> its arithmetic, as Input:/Output: (held out)", "Input: ", "\nOutput:", True
        ),
    )
}


def split_of(key: tuple) -> str:
    """The split a problem belongs to, from its kind and numbers only (so no phrasing of an eval
    problem, in any skill, is ever trained on)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") % EVAL_SHARE == 0 else "train"


def value(expr: str) -> int | float:
    """The value of one of the generated expressions (digits, + - * / and spaces only)."""
    if not expr.strip() or not set(expr) <= set("0123456789+-*/ ()") or "**" in expr:
        raise ValueError(f"not a generated expression: {expr!r}")
    try:
        result = eval(expr, {"__builtins__": {}}, {})
    except (SyntaxError, TypeError, ZeroDivisionError) as e:
        raise ValueError(f"not a generated expression: {expr!r} ({type(e).__name__})")
    return int(result) if float(result).is_integer() else result


def rows(name: str, split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """The first `n` rows (default: the skill's default for the split) of a split, always the same."""
    skill = SKILLS[name]
    n = skill.default_rows(split) if n is None else n
    rng = random.Random(f"{name}/{split}/{seed}")
    out: list[dict] = []
    seen: set = set()
    misses = 0
    while len(out) < n:
        # a split is taken as exhausted after 20000 draws in a row give nothing new (a split that
        # still had a row in a thousand left would be this unlucky once in 10^8 times)
        if misses > 20_000:
            raise ValueError(f"builtin:{name}:{split} has fewer than {n} distinct rows")
        p = skill.draw(rng)
        prompt = skill.prompt(p)
        if split_of(p.key) != split or prompt in seen:
            misses += 1
            continue
        misses = 0
        seen.add(prompt)
        out.append({"prompt": prompt, "completion": skill.completion(p), "answer": value(p.expr)})
    return out
