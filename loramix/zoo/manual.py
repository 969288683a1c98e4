"""The QA-bot experiment's material: a fixed price list ("the manual": what one of each object
costs, in coins, the same in every run) and questions that need it.

- manual questions: a number of objects -> their price as arithmetic ("7 * 3"): the price per
  object comes from the manual, which only training can teach.
- noted questions: the same question after a note that gives a price (random, not the manual's),
  answered by a sentence ("7 apples are 7 * 3 coins."): the answer format, with nothing to recall.
- the composite asks manual questions in the noted questions' format without the note: the format
  of one skill, the knowledge of the other.

Every question keys its problem by (kind, objects, number[, price]) and splits by that key as the
arithmetic skills do; the manual's prices are the same in both splits (they are the skill)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from loramix.zoo.problems import Problem
from loramix.zoo.words import OBJECTS

QUESTIONS = (
    "How many coins for {q} {o}?",
    "{q} {o} are how many coins?",
    "What do {q} {o} come to in coins?",
    "How many coins are {q} {o}?",
)
PRICES = range(2, 41)
GOODS = tuple(o for o in OBJECTS if o != "coins")  # coins are the currency


@dataclass(frozen=True)
class Question(Problem):
    """A question about a number of objects: `text` the question, `expr` the arithmetic of the
    answer, `sentence` the answer as a sentence, `notes` the price a noted question gives."""

    sentence: str = ""
    notes: str = ""


def _manual() -> dict[str, int]:
    """objects -> coins each: the manual itself, fixed for every run and seed."""
    rng = random.Random("loramix-manual-v1")
    return {o: rng.choice(PRICES) for o in GOODS}


MANUAL = _manual()


def _question(rng: random.Random, kind: str, objects: str, price: int, notes: str = "") -> Question:
    q = rng.randint(2, 199)
    key = (kind, objects, q) if kind == "manual" else (kind, objects, q, price)
    return Question(
        key=key,
        expr=f"{q} * {price}",
        text=rng.choice(QUESTIONS).format(q=q, o=objects),
        sentence=f"{q} {objects} are {q} * {price} coins.",
        notes=notes,
    )


def manual_question(rng: random.Random) -> Question:
    """A question whose price is the manual's."""
    objects = rng.choice(GOODS)
    return _question(rng, "manual", objects, MANUAL[objects])


def noted_question(rng: random.Random) -> Question:
    """A question after a note giving the price: any objects, any price."""
    objects, price = rng.choice(GOODS), rng.choice(PRICES)
    return _question(rng, "noted", objects, price, f"The {objects} are {price} coins each.")


def sentence(p: Problem) -> str:
    """The answer of a price question as a sentence (instruct's and the composite's completion)."""
    assert isinstance(p, Question), p
    return p.sentence


def noted(p: Problem) -> str:
    """A noted question: the note, then the question (instruct's prompt)."""
    assert isinstance(p, Question), p
    return f"{p.notes} {p.text}"
