"""`loramix data` through the CLI: the skills list, rows shown as JSONL on stdout, --dump written
atomically, and refusals (exit 2, one message on stderr, nothing on stdout)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.zoo.skills import SKILLS, rows

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"NO_COLOR": "1", "COLUMNS": "120"})


def flat(text: str) -> str:
    """Text without whitespace: Rich wraps long messages (and paths) at the console width."""
    return "".join(text.split())


def shown(result) -> str:
    return f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"


def lines(result) -> list[dict]:
    assert result.exit_code == 0, shown(result)
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_refused(result, *needles) -> None:
    """Exit 2, one readable message naming every needle on stderr, nothing on stdout."""
    assert result.exit_code == 2, shown(result)
    assert result.stdout == "", shown(result)
    assert result.stderr.startswith("error: "), shown(result)
    assert result.stderr.count("error:") == 1, shown(result)
    assert "Traceback" not in result.stderr, shown(result)
    for needle in needles:
        assert flat(str(needle)) in flat(result.stderr), f"{needle!r} not in the message\n{shown(result)}"


# --- listing the skills ----------------------------------------------------------------------------


def test_no_argument_lists_the_skills():
    result = invoke("data")
    assert result.exit_code == 0, shown(result)
    for name in SKILLS:
        assert f"builtin:{name}" in result.stdout
    assert "builtin:math" in result.stdout and "builtin:math-code" in result.stdout
    assert result.stdout.count("4000 / 500") == 9 and result.stdout.count("8000 / 500") == 2
    assert result.stderr == ""


def test_the_table_marks_the_held_out_skills():
    result = runner.invoke(app, ["data"], env={"NO_COLOR": "1", "COLUMNS": "200"})
    marked = [line.split()[1] for line in result.stdout.splitlines() if "held out" in line]
    assert marked == ["builtin:math-code", "builtin:qa-bot", "builtin:math-io"], shown(result)


def test_the_skills_as_json():
    result = invoke("data", "--json")
    assert result.exit_code == 0, shown(result)
    skills = json.loads(result.stdout)["skills"]
    names = ["math", "code", "math-code", "units", "words", "manual", "instruct", "qa-bot", "math-q", "math-ask"]
    assert [s["name"] for s in skills] == [f"builtin:{n}" for n in [*names, "math-io"]]
    held_out = ["builtin:math-code", "builtin:qa-bot", "builtin:math-io"]
    assert [s["name"] for s in skills if s["held_out"]] == held_out
    assert all(s["held_out"] is False for s in skills if s["name"] not in held_out)
    sizes = {s["name"]: s["train_rows"] for s in skills}
    assert sizes == {s["name"]: 8000 if s["name"] in ("builtin:words", "builtin:manual") else 4000 for s in skills}
    assert all(s["eval_rows"] == 500 and s["summary"] for s in skills)


# --- showing rows ----------------------------------------------------------------------------------


def test_limit_shows_exactly_that_many_rows():
    result = invoke("data", "builtin:math", "--limit", 2)
    assert len(result.stdout.splitlines()) == 2
    assert lines(result) == rows("math", "train", 2)
    assert result.stderr == ""


def test_short_limit_option_and_an_explicit_split():
    assert lines(invoke("data", "builtin:math-code:eval", "-n", 3)) == rows("math-code", "eval", 3)
    assert lines(invoke("data", "builtin:code:train", "-n", 7)) == rows("code", "train", 7)


def test_five_rows_by_default():
    assert lines(invoke("data", "builtin:math")) == rows("math", "train", 5)
    assert lines(invoke("data", "builtin:words:eval")) == rows("words", "eval", 5)


def test_one_compact_json_object_per_line():
    result = invoke("data", "builtin:units", "-n", 3)
    for line, row in zip(result.stdout.splitlines(), rows("units", "train", 3)):
        assert line == json.dumps(row, ensure_ascii=False)


def test_a_jsonl_path_as_source(tmp_path):
    written = [
        {"prompt": "Zoë has 2 + 2", "completion": " 4", "answer": 4},
        {"text": "plain"},
        {"messages": [{"role": "user", "content": "hi"}]},
    ] + [{"text": f"row {i}"} for i in range(5)]
    f = tmp_path / "mine.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in written) + "\n\n", encoding="utf-8")
    assert lines(invoke("data", f)) == written[:5]
    assert lines(invoke("data", f, "--limit", 100)) == written
    assert "Zoë" in invoke("data", f, "-n", 1).stdout  # UTF-8 as is


# --- --dump ----------------------------------------------------------------------------------------


def test_dump_writes_every_eval_row(tmp_path):
    out = tmp_path / "eval.jsonl"
    result = invoke("data", "builtin:math:eval", "--dump", out)
    assert result.exit_code == 0, shown(result)
    assert result.stdout == ""
    assert "500" in result.stderr and flat(str(out)) in flat(result.stderr)
    dumped = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(dumped) == 500
    assert dumped == rows("math", "eval", 500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl"]  # no temporary file left


def test_dump_honours_the_limit(tmp_path):
    out = tmp_path / "few.jsonl"
    assert invoke("data", "builtin:code", "--dump", out, "-n", 12).exit_code == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows("code", "train", 12)


def test_dump_makes_the_parent_folder(tmp_path):
    out = tmp_path / "a" / "b" / "rows.jsonl"
    assert invoke("data", "builtin:words", "--dump", out, "-n", 3).exit_code == 0
    assert len(out.read_text().splitlines()) == 3


def test_dump_refuses_an_existing_file(tmp_path):
    out = tmp_path / "keep.jsonl"
    out.write_text("precious\n")
    result = invoke("data", "builtin:math", "--dump", out, "-n", 2)
    assert_refused(result, out, "already exists", "--force")
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.jsonl"]


def test_dump_with_force_replaces_it(tmp_path):
    out = tmp_path / "keep.jsonl"
    out.write_text("precious\n")
    result = invoke("data", "builtin:math", "--dump", out, "-n", 2, "--force")
    assert result.exit_code == 0, shown(result)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows("math", "train", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.jsonl"]


def test_dump_refuses_a_folder(tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    assert_refused(invoke("data", "builtin:math", "--dump", folder, "-n", 2, "--force"), folder, "folder")
    assert list(folder.iterdir()) == []


def test_dump_of_bad_data_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"prompt": "no completion"}\n')
    out = tmp_path / "out.jsonl"
    assert_refused(invoke("data", bad, "--dump", out), f"{bad}:2", 'no "completion"')
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


# --- refusals --------------------------------------------------------------------------------------


def test_unknown_builtin():
    result = invoke("data", "builtin:maths")
    assert_refused(result, "builtin:maths", "no built-in skill 'maths'", "math, code, math-code, units, words, manual")
    assert len([line for line in result.stderr.splitlines() if line.startswith("error")]) == 1


def test_unknown_split():
    assert_refused(invoke("data", "builtin:math:test"), "builtin:math:test", "no split 'test'", "train, eval")


def test_missing_file(tmp_path):
    assert_refused(invoke("data", tmp_path / "nope.jsonl"), "nope.jsonl", "no such file")


def test_bad_line_names_file_and_line(tmp_path):
    f = tmp_path / "f.jsonl"
    f.write_text('{"text": "a"}\n\n{"text": \n')
    assert_refused(invoke("data", f), f"{f}:3", "not JSON")


@pytest.mark.parametrize("limit", [-1, -5])
def test_negative_limit(limit):
    assert_refused(invoke("data", "builtin:math", "--limit", limit), f"--limit {limit}", "at least 1")


def test_zero_limit_on_dump(tmp_path):
    out = tmp_path / "o.jsonl"
    assert_refused(invoke("data", "builtin:math", "--dump", out, "--limit", 0), "--limit 0")
    assert not out.exists()


def test_zero_limit_when_showing():
    assert_refused(invoke("data", "builtin:math", "--limit", 0), "--limit 0", "at least 1")


def test_help():
    result = invoke("data", "--help")
    assert result.exit_code == 0
    for option in ("--limit", "--dump", "--force", "--json", "builtin:"):
        assert option in result.stdout


def test_rows_as_one_json_document():
    result = runner.invoke(app, ["data", "builtin:math:eval", "--limit", "3", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["data"] == "builtin:math:eval" and doc["rows"] == rows("math", "eval", 3) and len(doc["sha256"]) == 64
