"""Scoring rules on hand-made outputs with known scores, and the intervals."""

from __future__ import annotations

import math

import pytest

from loramix.evaluate import metrics


@pytest.mark.parametrize(
    "output, reference, expected",
    [
        (" 4 * 12", "4 * 12", True),
        ("4  *\t12\n", " 4 * 12", True),
        ("4 * 13", "4 * 12", False),
        ("", "4 * 12", False),
        ("print(4*12)", "print(4 * 12)", False),  # spacing inside a token run is not whitespace collapse
    ],
)
def test_exact(output, reference, expected):
    assert metrics.exact(output, reference) is expected


@pytest.mark.parametrize(
    "text, number",
    [
        ("The answer is 42.", 42.0),
        ("-3 apples", -3.0),
        ("1,234.5 and then 7", 7.0),
        ("total: 1,234.5", 1234.5),
        ("x = .5", 0.5),
        ("2.5e3", 2500.0),
        ("no digits", None),
        ("", None),
        ("ratio 3/4", 4.0),
    ],
)
def test_last_number(text, number):
    assert metrics.last_number(text) == number


@pytest.mark.parametrize(
    "output, answer, tolerance, expected",
    [
        ("48\n", 48, 1e-4, True),
        ("48.0", 48, 1e-4, True),
        ("14.000001", 14, 1e-4, True),  # relative and absolute tolerance
        ("14.01", 14, 1e-4, False),
        ("14.01", 14, 0.1, True),
        ("so 7 then 9", 9, 1e-4, True),  # the last number counts
        ("9 then 7", 9, 1e-4, False),
        ("", 9, 1e-4, False),
        ("-5", -5.0, 0, True),
        ("12", "12", 1e-4, True),  # a numeric string answer is compared as a number
        ("12.0", "12", 1e-4, True),
        ("hello world\n", "Hello world", 1e-4, False),
        ("x\nhello  world\n", "hello world", 1e-4, True),  # text answers: the last line, normalised
        ("True", True, 1e-4, True),  # a bool is compared as text, not as the number 1
        ("1", True, 1e-4, False),
    ],
)
def test_same_answer(output, answer, tolerance, expected):
    assert metrics.same_answer(output, answer, tolerance) is expected


@pytest.mark.parametrize(
    "output, program",
    [
        (" print(4 * 12)", "print(4 * 12)\n"),
        ("Here:\n```python\nx = 3\nprint(x)\n```\nDone", "x = 3\nprint(x)\n"),
        ("```\nprint(1)\n```", "print(1)\n"),
        ("```python\nprint(2)", "print(2)\n"),  # an unclosed fence still gives its program
    ],
)
def test_program_text(output, program):
    assert metrics.program_text(output) == program


def test_wilson_interval():
    lo, hi = metrics.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert metrics.wilson(0, 20)[0] == 0.0 and 0.1 < metrics.wilson(0, 20)[1] < 0.2
    assert metrics.wilson(20, 20)[1] == 1.0 and metrics.wilson(20, 20)[0] > 0.8
    assert metrics.wilson(0, 0) == (0.0, 1.0)


def test_bootstrap_ratio_brackets_the_token_weighted_mean():
    sums, counts = [float(i % 7) * 3 for i in range(200)], [3] * 200
    mean = sum(sums) / sum(counts)
    lo, hi = metrics.bootstrap_ratio(sums, counts, seed=1)
    assert lo < mean < hi and hi - lo < 1.0
    assert metrics.bootstrap_ratio(sums, counts, seed=1) == (lo, hi)  # seeded
    same = metrics.bootstrap_ratio([2.0] * 10, [1] * 10)
    assert same == (2.0, 2.0) and all(math.isnan(x) for x in metrics.bootstrap_ratio([], []))
