"""Arithmetic problems behind the built-in skills. A problem has a key (its kind and numbers, which
decides its split), the expression that solves it, a word-problem story and an instruction that
names the operations explicitly. Every phrasing is drawn from several templates."""

from __future__ import annotations

import random
from dataclasses import dataclass

from loramix.zoo.words import CONTAINERS, NAMES, OBJECTS, PLACES, UNITS, number_word


@dataclass(frozen=True)
class Problem:
    key: tuple  # (kind, numbers...): equal keys always land in the same split
    expr: str  # "4 * 12 - 3"
    text: str  # the question in words
    instruction: str = ""  # the same computation, operations named explicitly


def _people(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    return a, b


def _mul(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 20)
    n, _ = _people(rng)
    one, many = rng.choice(CONTAINERS)
    o = rng.choice(OBJECTS)
    text = rng.choice(
        (
            f"{n} has {a} {many}. Each {one} holds {b} {o}. How many {o} does {n} have?",
            f"There are {a} {many} with {b} {o} in each. How many {o} are there in total?",
            f"{n} buys {a} {many} of {o}, {b} {o} per {one}. How many {o} did {n} buy?",
            f"{n} fills {a} {many} and puts {b} {o} in every {one}. How many {o} are in the {many}?",
        )
    )
    ins = rng.choice(
        (
            f"Write a program that prints {a} times {b}.",
            f"Print the product of {a} and {b}.",
            f"Multiply {a} by {b} and print the result.",
        )
    )
    return Problem(("mul", a, b), f"{a} * {b}", text, ins)


def _add(rng):
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    n, f = _people(rng)
    o = rng.choice(OBJECTS)
    text = rng.choice(
        (
            f"{n} has {a} {o} and finds {b} more at {rng.choice(PLACES)}. How many {o} does {n} have now?",
            f"{n} had {a} {o}. {f} gave {n} {b} more. How many {o} does {n} have?",
            f"{n} has {a} {o} and {f} has {b} {o}. How many {o} do they have together?",
            f"On Monday {n} collected {a} {o} and on Tuesday {b} {o}. How many {o} did {n} collect?",
        )
    )
    ins = rng.choice(
        (
            f"Write a program that prints {a} plus {b}.",
            f"Print the sum of {a} and {b}.",
            f"Add {a} and {b} and print the result.",
        )
    )
    return Problem(("add", a, b), f"{a} + {b}", text, ins)


def _sub(rng):
    a = rng.randint(10, 90)
    b = rng.randint(1, a - 1)
    n, f = _people(rng)
    o = rng.choice(OBJECTS)
    text = rng.choice(
        (
            f"{n} has {a} {o} and gives {b} to {f}. How many {o} are left?",
            f"{n} had {a} {o}. {n} lost {b} of them at {rng.choice(PLACES)}. How many {o} does {n} have now?",
            f"There were {a} {o} on the table and {f} took {b}. How many {o} remain?",
            f"{n} baked {a} {o} and sold {b}. How many {o} did {n} keep?",
        )
    )
    ins = rng.choice(
        (
            f"Write a program that prints {a} minus {b}.",
            f"Subtract {b} from {a} and print the result.",
            f"Print the difference between {a} and {b}.",
        )
    )
    return Problem(("sub", a, b), f"{a} - {b}", text, ins)


def _div(rng):
    b, q = rng.randint(2, 10), rng.randint(2, 15)
    a = b * q
    n, _ = _people(rng)
    o = rng.choice(OBJECTS)
    one, many = rng.choice(CONTAINERS)
    text = rng.choice(
        (
            f"{n} shares {a} {o} equally among {b} friends. How many {o} does each friend get?",
            f"{n} puts {a} {o} into {b} {many} with the same number in each. How many {o} are in one {one}?",
            f"{a} {o} are split evenly between {b} children. How many {o} does each child get?",
        )
    )
    ins = rng.choice(
        (
            f"Write a program that prints {a} divided by {b}.",
            f"Divide {a} by {b} and print the result.",
            f"Print the quotient of {a} and {b}.",
        )
    )
    return Problem(("div", a, b), f"{a} / {b}", text, ins)


def _mul_sub(rng):
    a, b = rng.randint(2, 9), rng.randint(3, 12)
    c = rng.randint(1, a * b - 1)
    n, f = _people(rng)
    o = rng.choice(OBJECTS)
    one, many = rng.choice(CONTAINERS)
    text = rng.choice(
        (
            f"{n} has {a} {many} with {b} {o} in each and gives {c} {o} to {f}. How many {o} are left?",
            f"There are {a} {many} of {b} {o}. {f} takes {c} {o}. How many {o} remain?",
            f"{n} buys {a} {many} of {o}, {b} per {one}, and uses {c} of them. How many {o} are left?",
        )
    )
    ins = rng.choice(
        (
            f"Write a program that prints {a} times {b} minus {c}.",
            f"Multiply {a} by {b}, subtract {c}, and print the result.",
        )
    )
    return Problem(("mul_sub", a, b, c), f"{a} * {b} - {c}", text, ins)


def _mul_add(rng):
    a, b, c = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 30)
    n, f = _people(rng)
    o = rng.choice(OBJECTS)
    one, many = rng.choice(CONTAINERS)
    text = rng.choice(
        (
            f"{n} has {a} {many} with {b} {o} in each and {c} loose {o}. How many {o} does {n} have?",
            f"There are {a} {many} of {b} {o} and {f} brings {c} more {o}. How many {o} are there?",
            f"{n} packs {a} {many} with {b} {o} per {one}, then finds {c} more {o}. How many {o} in all?",
        )
    )
    ins = rng.choice(
        (f"Write a program that prints {a} times {b} plus {c}.", f"Multiply {a} by {b}, add {c}, and print the result.")
    )
    return Problem(("mul_add", a, b, c), f"{a} * {b} + {c}", text, ins)


ARITHMETIC = (_mul, _add, _sub, _div, _mul_sub, _mul_add)


def arithmetic(rng: random.Random) -> Problem:
    return rng.choice(ARITHMETIC)(rng)


def unit_conversion(rng: random.Random) -> Problem:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 199)
    if rng.random() < 0.5:
        text = rng.choice(
            (f"How many {small} are in {n} {big}?", f"Convert {n} {big} to {small}.", f"What is {n} {big} in {small}?")
        )
        return Problem(("unit_down", big, n), f"{n} * {factor}", text)
    total = n * factor
    text = rng.choice(
        (
            f"How many {big} are {total} {small}?",
            f"Convert {total} {small} to {big}.",
            f"What is {total} {small} in {big}?",
        )
    )
    return Problem(("unit_up", big, n), f"{total} / {factor}", text)


def number_words(rng: random.Random) -> Problem:
    op, word = rng.choice((("+", "plus"), ("-", "minus"), ("*", "times")))
    a = rng.randint(0, 999)
    b = rng.randint(0, a) if op == "-" else rng.randint(0, 999 if op == "+" else 20)
    text = f"{number_word(a)} {word} {number_word(b)}"
    return Problem(("words", op, a, b), f"{a} {op} {b}", text)
