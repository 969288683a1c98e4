"""`loramix eval` end to end on loramix-tiny: the table, --json, --predictions, each metric, refusals."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loramix import models
from loramix.cli import app
from tests.helpers import make_adapter

runner = CliRunner(env={"COLUMNS": "1000"})
QUICK = ["--limit", "8", "--max-new-tokens", "6", "--threads", "1"]
MODEL_KEYS = {"name", "adapter", "score", "ci", "correct", "items_scored", "tokens", "seconds", "tokens_per_second"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two random LoRAs on loramix-tiny, strong enough to change what it writes."""
    root = tmp_path_factory.mktemp("eval")
    out = []
    for name, seed in (("alpha", 1), ("beta", 2)):
        folder = make_adapter(models.bundled_path(), root / name, r=4, alpha=8, seed=seed, scale_b=0.3)
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "loramix-tiny"
        (folder / "adapter_config.json").write_text(json.dumps(config))
        out.append(folder)
    return out


def _eval(*args):
    return runner.invoke(app, ["eval", *map(str, args)])


def test_two_adapters_and_the_base_make_three_rows(pair):
    result = _eval("-d", "builtin:math", "-a", pair[0], "-a", pair[1], *QUICK)
    assert result.exit_code == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    rows = [cells[0] for cells in lines if len(cells) == 5 and cells[1].endswith("%") and cells[3] == "8"]
    assert rows == ["base", "alpha", "beta"]
    assert "builtin:math:eval (8 items, metric exact)" in result.stdout and "95% interval" in result.stdout


def test_json_schema_and_predictions(pair, tmp_path):
    preds = tmp_path / "p.jsonl"
    result = _eval("-d", "builtin:math", "-a", pair[0], "-a", pair[1], *QUICK, "--json", "--predictions", preds)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {"loramix", "command", "data", "sha256", "items", "metric", "base", "device", "dtype", "settings",
            "models"} <= set(doc)
    assert doc["data"] == "builtin:math:eval" and doc["items"] == 8 and doc["base"] == "loramix-tiny"
    assert doc["settings"]["stop"] == ["\n"] and doc["settings"]["max_new_tokens"] == 6
    assert [m["name"] for m in doc["models"]] == ["base", "alpha", "beta"]
    for m in doc["models"]:
        assert set(m) == MODEL_KEYS and m["items_scored"] == 8 and m["ci"][0] <= m["score"] <= m["ci"][1]
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(records) == 24 and set(records[0]) == {"model", "index", "prompt", "output", "expected", "score"}
    for m in doc["models"]:
        assert sum(r["score"] for r in records if r["model"] == m["name"]) == m["correct"]
    outputs = {name: [r["output"] for r in records if r["model"] == name] for name in ("base", "alpha", "beta")}
    assert outputs["alpha"] != outputs["base"] and outputs["beta"] != outputs["alpha"]  # the adapters were switched


def test_an_adapter_scores_the_same_alone_and_beside_others(pair, tmp_path):
    together, alone = tmp_path / "t.jsonl", tmp_path / "a.jsonl"
    assert _eval("-d", "builtin:code", "-a", pair[0], "-a", pair[1], *QUICK, "--predictions", together).exit_code == 0
    assert _eval("-d", "builtin:code", "-a", pair[1], "--no-base", *QUICK, "--predictions", alone).exit_code == 0
    beta = [json.loads(x)["output"] for x in together.read_text().splitlines() if json.loads(x)["model"] == "beta"]
    assert beta == [json.loads(x)["output"] for x in alone.read_text().splitlines()]


def test_loss_metric(pair):
    result = _eval("-d", "builtin:math", "-a", pair[0], "-m", "loss", "--limit", "16", "--threads", "1", "--json")
    assert result.exit_code == 0, result.stderr
    base, alpha = json.loads(result.stdout)["models"]
    import math

    for m in (base, alpha):
        assert m["ci"][0] < m["score"] < m["ci"][1] and m["perplexity"] == pytest.approx(math.exp(m["score"]))
    assert base["score"] != alpha["score"]


def test_four_bit_base(pair):
    result = _eval("-d", "builtin:math", "-a", pair[0], *QUICK, "--load-in-4bit", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["load_in_4bit"] and [m["items_scored"] for m in doc["models"]] == [8, 8]


@pytest.mark.parametrize("args, message", [
    (["-d", "builtin:math", "-m", "bleu"], "--metric bleu: unknown"),
    (["-d", "builtin:math", "--no-base"], "nothing to score: --no-base and no --adapter"),
    (["-d", "builtin:math", "--limit", "0"], "--limit 0: must be at least 1"),
    (["-d", "builtin:math", "-m", "numeric", "--tolerance", "-1"], "--tolerance -1.0: must be a finite number >= 0"),
    (["-d", "builtin:nope"], "no built-in skill 'nope'"),
    (["-d", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["-d", "{tmp}/text.jsonl"], "row 1: has only \"text\"; --metric exact needs prompts"),
    (["-d", "{tmp}/nonum.jsonl", "-m", "numeric"], "row 1: has no \"answer\" and no number in its completion"),
    (["-d", "builtin:math", "--predictions", "{tmp}"], "is a folder; --predictions names a file"),
    (["-d", "builtin:math", "--predictions", "{tmp}/old.jsonl"], "old.jsonl: already exists"),
    (["-d", "builtin:math", "-a", "{tmp}/nowhere"], "nowhere"),
])
def test_refusals(pair, tmp_path, args, message):
    (tmp_path / "text.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "nonum.jsonl").write_text('{"prompt": "p", "completion": "none"}\n')
    (tmp_path / "old.jsonl").write_text("keep\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _eval(*QUICK, *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "old.jsonl").read_text() == "keep\n"


def test_adapters_from_another_base_are_refused(pair, base_dir, tmp_path):
    other = make_adapter(base_dir, tmp_path / "other", r=2)
    result = _eval("-d", "builtin:math", "-a", pair[0], "-a", other, *QUICK)
    assert result.exit_code == 2 and "adapters for different bases" in result.stderr


def test_program_metric_runs_each_output_in_the_sandbox(pair, tmp_path, monkeypatch):
    from loramix import generation

    rows = [{"prompt": "a", "completion": " print(2 * 3)", "answer": 6},
            {"prompt": "b", "completion": " print(7)", "answer": 7},
            {"prompt": "c", "completion": " print(1)", "answer": 1},
            {"prompt": "d", "completion": " print(5 + 5)"},  # no answer: what the reference program prints
            {"prompt": "e", "completion": " print(4)", "answer": 4}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    outputs = [" print(2 * 3)", "def solution():\n    return 7", " while True: pass", " print(10.0)",
               " import os\nprint(os.environ.get('LORAMIX_SECRET'))"]
    monkeypatch.setenv("LORAMIX_SECRET", "4")  # were the environment passed on, item e would score
    monkeypatch.setattr(generation, "generate", lambda *a, **k: [generation.Generated(o, 3) for o in outputs])
    preds = tmp_path / "p.jsonl"
    result = _eval("-d", tmp_path / "d.jsonl", "-m", "program", "--timeout", "1", "--json", "--predictions", preds,
                   "--threads", "1")
    assert result.exit_code == 0, result.stderr
    (base,) = json.loads(result.stdout)["models"]
    assert base["correct"] == 3 and base["score"] == pytest.approx(0.6)
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["score"] for r in records] == [1, 1, 0, 1, 0]
    assert records[2]["error"] in ("timeout", "cpu time") and records[3]["expected"] == "10"
    assert records[4]["printed"].strip() == "None"


def test_program_rows_without_answer_need_a_reference_that_runs(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "p", "completion": " print(1/0)"}) + "\n")
    result = _eval("-d", tmp_path / "d.jsonl", "-m", "program", "--threads", "1")
    assert result.exit_code == 2
    assert "row 1: has no \"answer\" and its reference program fails (ZeroDivisionError" in result.stderr
