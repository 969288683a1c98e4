"""The synthetic pretraining corpus of loramix-tiny. It teaches the vocabulary and the fragments the
built-in skills are made of (stories, instructions, numbers in words and digits, arithmetic facts,
Python lines) but never a task: no story or instruction is followed by its answer or program.

Like real text it repeats itself (a line quoted again later in a document, the numbers of a story
listed after it), which is what teaches a model to copy: without it, a skill LoRA on this base
learns the output format but not to carry the problem's numbers over."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from loramix.zoo.problems import Problem, arithmetic, number_words, unit_conversion
from loramix.zoo.skills import split_of
from loramix.zoo.words import NAMES, OBJECTS, PLACES, UNITS, number_word

OPS = (("+", "plus"), ("-", "minus"), ("*", "times"), ("/", "divided by"))


def _expr(rng: random.Random) -> str:
    a, b = rng.randint(0, 99), rng.randint(1, 30)
    op = rng.choice(OPS)[0]
    if rng.random() < 0.3:
        return f"{a} {op} {b} {rng.choice('+-*')} {rng.randint(1, 30)}"
    return f"{a} {op} {b}"


def _fact(rng: random.Random) -> str:
    a, b = rng.randint(0, 30), rng.randint(1, 30)
    sym, word = rng.choice(OPS)
    if sym == "/":
        a = a * b
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[sym]
    return rng.choice((f"{a} {sym} {b} = {result}", f"{a} {word} {b} is {result}."))


def _python(rng: random.Random) -> str:
    v, w = rng.sample("abnxyz", 2)
    lines = rng.choice(
        (
            [f"print({_expr(rng)})"],
            [f"{v} = {_expr(rng)}", f"print({v})"],
            [f"{v} = {rng.randint(0, 99)}", f"{w} = {v} {rng.choice('+-*')} {rng.randint(1, 20)}", f"print({w})"],
            [f"Code: print({_expr(rng)})"],
        )
    )
    return "\n".join(lines)


def _train_problem(draw, rng: random.Random) -> Problem:
    """A problem from the train split only: no eval problem is ever seen in pretraining."""
    while True:
        problem = draw(rng)
        if split_of(problem.key) == "train":
            return problem


def _number(rng: random.Random) -> str:
    n = rng.randint(0, 999)
    return rng.choice(
        (
            f"{number_word(n)} is {n}.",
            f"{n} is written {number_word(n)}.",
            f"{rng.choice(NAMES)} counted {number_word(n)} {rng.choice(OBJECTS)}.",
        )
    )


def _unit(rng: random.Random) -> str:
    big, small, factor = rng.choice(UNITS)
    return rng.choice(
        (
            f"One of the {big} is {factor} {small}.",
            f"There are {factor} {small} in 1 of the {big}.",
            f"{rng.choice(NAMES)} walked to {rng.choice(PLACES)} in {rng.randint(2, 60)} {small}.",
        )
    )


def _story(rng: random.Random) -> str:
    problem = _train_problem(rng.choice((arithmetic, arithmetic, arithmetic, unit_conversion)), rng)
    statements = problem.text.split(". ")[:-1]  # without the question
    return rng.choice(
        (problem.text, f"Problem: {problem.text}", ". ".join(statements) + "." if statements else problem.text)
    )


def _numbers_again(rng: random.Random) -> str:
    problem = _train_problem(rng.choice((arithmetic, unit_conversion)), rng)
    text = rng.choice((problem.text, problem.instruction or problem.text))
    numbers = sorted(re.findall(r"\d+", text), key=int)  # sorted: never the order of the answer
    return f"{text}\n{rng.choice(('Numbers:', 'The numbers are', 'We see'))} {', '.join(numbers)}."


def _instruction(rng: random.Random) -> str:
    text = _train_problem(arithmetic, rng).instruction
    return rng.choice((text, f"Task: {text}"))


def _words(rng: random.Random) -> str:
    return _train_problem(number_words, rng).text


LINES = (
    (_story, 4),
    (_instruction, 2),
    (_python, 3),
    (_fact, 2),
    (_number, 2),
    (_unit, 1),
    (_words, 1),
    (_numbers_again, 2),
)


def documents(seed: int) -> Iterator[str]:
    """An endless, deterministic stream of short documents (a few lines each)."""
    rng = random.Random(f"loramix-tiny/{seed}")
    makers = [m for m, weight in LINES for _ in range(weight)]
    while True:
        lines = [(m, m(rng)) for m in (rng.choice(makers) for _ in range(rng.randint(1, 4)))]
        if rng.random() < 0.5:  # quote an earlier line again
            lines.insert(rng.randint(1, len(lines)), rng.choice(lines))
        # programs first: no story or instruction is ever followed by a program, even a random one
        lines.sort(key=lambda line: line[0] is not _python)
        yield "\n".join(text for _, text in lines)
