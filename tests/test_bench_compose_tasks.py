"""bench/compose_tasks.py's bookkeeping: how a QA-bot answer is split into format and knowledge,
the summary over seeds and the verdict line (the benchmark's numbers rest on these)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def ct():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("compose_tasks", BENCH / "compose_tasks.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_composite_parts_tell_format_from_knowledge(ct, tmp_path):
    expected = " 7 apples are 7 * 3 coins."
    outputs = {
        "both": expected,
        "format": " 7 apples are 7 * 9 coins.",
        "knowledge": " 7 * 3",
        "neither": " 12 * 5",
        "broken": " 7 apples are 7 * 3",  # the price, not the sentence
    }
    lines = [json.dumps({"model": m, "output": o, "expected": expected}) for m, o in outputs.items()]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    parts = ct.composite_parts(tmp_path / "p.jsonl")
    got = {m: (p["in instruct's format"], p["right price"]) for m, p in parts.items()}
    assert got == {
        "both": (1.0, 1.0),
        "format": (1.0, 0.0),
        "knowledge": (0.0, 1.0),
        "neither": (0.0, 0.0),
        "broken": (0.0, 1.0),
    }


def row(model: str, comp: float, manual: float, instruct: float) -> dict:
    return {"model": model, "qa-bot": comp, "manual": manual, "instruct": instruct}


def test_summary_and_verdict_over_seeds(ct):
    spec = ct.EXPERIMENTS["qa-bot"]
    runs = [
        [
            row("base", 0, 0, 0),
            row("manual", 0, 0.9, 0),
            row("instruct", 0, 0, 1.0),
            row("data mix, all rows", 0.2, 0.9, 0.9),
            row("data mix, CAT's 5% sample", 0.9, 0.5, 0.5),
            row("tuned-cat", 0.3, 0.45, 1.0),
        ],
        [
            row("base", 0, 0, 0),
            row("manual", 0, 1.0, 0),
            row("instruct", 0, 0, 0.5),
            row("data mix, all rows", 0.25, 1.0, 0.5),
            row("data mix, CAT's 5% sample", 0.9, 0.5, 0.5),
            row("tuned-cat", 0.4, 1.0, 0.5),
        ],
    ]
    summary = ct.summarise(spec, runs)
    tuned = summary[-1]
    assert tuned["qa-bot"] == {"mean": pytest.approx(0.35), "min": 0.3, "max": 0.4, "n": 2}
    assert tuned["kept manual"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert tuned["kept instruct"]["mean"] == pytest.approx(1.0)
    assert summary[1]["kept instruct"]["mean"] == 0.0  # the manual LoRA keeps nothing of instruct
    line = ct.verdict(spec, summary)
    # the equal-data mix is not a composition method, however well it scores
    assert "tuned-cat (35.0 (30.0–40.0))" in line
    assert line.endswith("above it, the ranges over seeds not overlapping.")
    runs[1][-1]["qa-bot"] = 0.2
    assert ct.verdict(spec, ct.summarise(spec, runs)).endswith(
        "above it in the mean, the ranges over seeds overlapping."
    )
    runs[0][-1]["qa-bot"] = 0.1
    assert ct.verdict(spec, ct.summarise(spec, runs)).endswith("below it.")
