"""Scoring one output against one row, and the 95% intervals `eval` reports.

- exact: the normalised completion equals the reference's (whitespace collapsed, ends trimmed);
- numeric: the last number in the output is within the tolerance of the row's "answer" (or, without
  one, of the last number in its completion), as the paper's released scorer does;
- program: the output is a Python program, run in the sandbox; what it prints (or what its
  `solution()` returns) is compared to "answer", numerically where both are numbers (GSM-Hard's
  PAL style). Without "answer", the reference completion is run for the expected output.
"""

from __future__ import annotations

import math
import random
import re
from enum import Enum


class Metric(str, Enum):
    exact = "exact"
    numeric = "numeric"
    program = "program"
    loss = "loss"


METRICS = tuple(m.value for m in Metric)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.S)


def normalise(text: str) -> str:
    """Collapse whitespace and trim: ' print(4 *  12)\\n' -> 'print(4 * 12)'."""
    return re.sub(r"\s+", " ", text).strip()


def exact(output: str, reference: str) -> bool:
    return normalise(output) == normalise(reference)


def last_number(text: str) -> float | None:
    """The last number written in `text` ('1,234.5' -> 1234.5), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def same_answer(output: str, answer, tolerance: float) -> bool:
    """`output` states `answer`: numerically (its last number, within `tolerance` absolute or
    relative) when the answer is a number, else as the normalised text of its last line."""
    expected = answer if isinstance(answer, (int, float)) and not isinstance(answer, bool) else _as_number(answer)
    if expected is not None:
        got = last_number(output)
        return got is not None and math.isclose(got, float(expected), rel_tol=tolerance, abs_tol=tolerance)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return bool(lines) and normalise(lines[-1]) == normalise(str(answer))


def _as_number(answer) -> float | None:
    if isinstance(answer, str) and _NUMBER.fullmatch(answer.strip()):
        return float(answer.strip().replace(",", ""))
    return None


def program_text(output: str) -> str:
    """The program in a model's output: the first fenced ```python block if any, else all of it."""
    fenced = _FENCE.search(output)
    return (fenced.group(1) if fenced else output).strip() + "\n"


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sensible at 0%, 100% and small n)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ratio(sums: list[float], counts: list[int], seed: int = 0, rounds: int = 1000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of Σsums/Σcounts resampling items (a token-weighted mean loss)."""
    if not sums:
        return (math.nan, math.nan)
    rng, n, stats = random.Random(seed), len(sums), []
    for _ in range(rounds):
        picks = [rng.randrange(n) for _ in range(n)]
        total = sum(counts[i] for i in picks)
        stats.append(sum(sums[i] for i in picks) / total if total else math.nan)
    stats.sort()
    return (stats[int(0.025 * rounds)], stats[int(0.975 * rounds) - 1])
