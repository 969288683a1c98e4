"""`loramix eval` end to end on loramix-tiny: the table, --json, --predictions, each metric, refusals."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.core import models
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
    assert {
        "loramix",
        "command",
        "data",
        "sha256",
        "items",
        "metric",
        "base",
        "device",
        "dtype",
        "settings",
        "models",
    } <= set(doc)
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


@pytest.mark.parametrize(
    "args, message",
    [
        (["-d", "builtin:math", "-m", "bleu"], "'bleu' is not one of 'exact', 'numeric', 'program', 'loss'"),
        (["-d", "builtin:math", "--no-base"], "nothing to score: --no-base and no --adapter"),
        (["-d", "builtin:math", "--limit", "0"], "--limit 0: must be at least 1"),
        (
            ["-d", "builtin:math", "-m", "numeric", "--tolerance", "-1"],
            "--tolerance -1.0: must be a finite number >= 0",
        ),
        (["-d", "builtin:nope"], "no built-in skill 'nope'"),
        (["-d", "{tmp}/missing.jsonl"], "missing.jsonl"),
        (["-d", "{tmp}/text.jsonl"], 'row 1: has only "text"; --metric exact needs prompts'),
        (["-d", "{tmp}/nonum.jsonl", "-m", "numeric"], 'row 1: has no "answer" and no number in its completion'),
        (["-d", "builtin:math", "--predictions", "{tmp}"], "is a folder; --predictions names a file"),
        (["-d", "builtin:math", "--predictions", "{tmp}/old.jsonl"], "old.jsonl: already exists"),
        (["-d", "builtin:math", "-a", "{tmp}/nowhere"], "nowhere"),
    ],
)
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
    from loramix.evaluate import generation

    rows = [
        {"prompt": "a", "completion": " print(2 * 3)", "answer": 6},
        {"prompt": "b", "completion": " print(7)", "answer": 7},
        {"prompt": "c", "completion": " print(1)", "answer": 1},
        {"prompt": "d", "completion": " print(5 + 5)"},  # no answer: what the reference program prints
        {"prompt": "e", "completion": " print(4)", "answer": 4},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    outputs = [
        " print(2 * 3)",
        "def solution():\n    return 7",
        " while True: pass",
        " print(10.0)",
        " import os\nprint(os.environ.get('LORAMIX_SECRET'))",
    ]
    monkeypatch.setenv("LORAMIX_SECRET", "4")  # were the environment passed on, item e would score
    monkeypatch.setattr(generation, "generate", lambda *a, **k: [generation.Generated(o, 3) for o in outputs])
    preds = tmp_path / "p.jsonl"
    result = _eval(
        "-d",
        tmp_path / "d.jsonl",
        "-m",
        "program",
        "--timeout",
        "1",
        "--json",
        "--predictions",
        preds,
        "--threads",
        "1",
    )
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
    assert 'row 1: has no "answer" and its reference program fails (ZeroDivisionError' in result.stderr


def _chat_base(tmp_path):
    """loramix-tiny with a chat template and a second end token in its generation config."""
    import shutil

    folder = tmp_path / "chat-base"
    shutil.copytree(models.bundled_path(), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_chat_rows_need_a_chat_template(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}) + "\n"
    )
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "2+2?", "completion": " 4"}) + "\n")
    result = _eval("-d", tmp_path / "m.jsonl", *QUICK)
    assert (
        result.exit_code == 2
        and 'm.jsonl: "messages" rows: the base\'s tokenizer has no chat template' in result.stderr
    )
    result = _eval("-d", tmp_path / "p.jsonl", "--chat-template", *QUICK)
    assert result.exit_code == 2 and "--chat-template: the base's tokenizer has no chat template" in result.stderr
    chat = _chat_base(tmp_path)
    result = _eval("-d", tmp_path / "m.jsonl", "-b", chat, *QUICK, "--predictions", tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "o.jsonl").read_text())["expected"] == "4"


def test_few_shot_goes_before_the_first_user_turn(tmp_path):
    from loramix.evaluate import generation

    tokenizer = models.load_tokenizer(_chat_base(tmp_path))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    ids = generation.prompt_ids([{"messages": messages}], tokenizer, prefix="EXAMPLES ")[0]
    assert tokenizer.decode(ids).endswith("system: Be brief.\nuser: EXAMPLES 2+2?\nassistant:")


def test_the_models_own_end_tokens_stop_generation():
    from types import SimpleNamespace

    from loramix.evaluate import generation

    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[2, 262]))
    assert generation.end_tokens(model, SimpleNamespace(eos_token_id=2)) == [2, 262]
    assert generation.end_tokens(SimpleNamespace(), SimpleNamespace(eos_token_id=5)) == [5]


def test_row_names_are_unique_and_never_base(tmp_path):
    from loramix.evaluate.job import model_names

    paths = [
        tmp_path / "x" / "base",
        tmp_path / "p1" / "run" / "soup",
        tmp_path / "p2" / "run" / "soup",
        tmp_path / "m",
    ]
    assert model_names(paths) == ["x/base", "p1/run/soup", "p2/run/soup", "m"]


def test_loss_is_the_mean_completion_token_cross_entropy(pair):
    import torch

    from loramix.core import data

    result = _eval("-d", "builtin:math", "-m", "loss", "--limit", "6", "--threads", "1", "--json")
    assert result.exit_code == 0, result.stderr
    model = models.load_model(models.bundled_path(), torch.float32, "cpu").eval()
    tokenizer = models.load_tokenizer(models.bundled_path())
    total, count = 0.0, 0
    for row in data.load("builtin:math:eval", 6).rows:
        ids, labels = data.tokenize(row, tokenizer, 1024)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        target = torch.tensor(labels[1:])
        keep = target != data.IGNORE
        total += float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))
        count += int(keep.sum())
    assert json.loads(result.stdout)["models"][0]["score"] == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "loss", "--max-length", "5"], "no row has a completion token within --max-length 5"),
        (["-m", "loss", "--few-shot", "{tmp}/shots.txt"], "--few-shot and --chat-template shape generated prompts"),
        (["--few-shot", "{tmp}/latin1.txt"], "latin1.txt: not UTF-8 text"),
        (["-a", "{pair0}", "-a", "{pair0}"], "given twice as --adapter"),
    ],
)
def test_more_refusals(pair, tmp_path, args, message):
    (tmp_path / "shots.txt").write_text("Problem: 1 + 1?\nAnswer: 1 + 1\n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    result = _eval("-d", "builtin:math", *QUICK, *[a.format(tmp=tmp_path, pair0=pair[0]) for a in args])
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr


def test_stop_strings_and_few_shot_reach_generation(pair, tmp_path):
    (tmp_path / "shots.txt").write_text("Problem: 1 + 1?\nAnswer: 1 + 1\n\n")
    alpha = ["-a", pair[0], "--no-base"]
    plain = json.loads(
        _eval("-d", "builtin:math", *QUICK, *alpha, "--stop", "", "--json", "--predictions", tmp_path / "a").stdout
    )
    shots = json.loads(
        _eval(
            "-d",
            "builtin:math",
            *QUICK,
            *alpha,
            "--stop",
            "",
            "--few-shot",
            tmp_path / "shots.txt",
            "--json",
            "--predictions",
            tmp_path / "b",
        ).stdout
    )
    stopped = json.loads(_eval("-d", "builtin:math", *QUICK, *alpha, "--stop", " ", "--json").stdout)
    assert plain["settings"]["stop"] == [] and stopped["settings"]["stop"] == [" "]
    assert shots["settings"]["few_shot_chars"] == len("Problem: 1 + 1?\nAnswer: 1 + 1\n\n")
    assert stopped["models"][0]["tokens"] < plain["models"][0]["tokens"] <= 8 * 6  # a space comes early
    outputs = [[json.loads(x)["output"] for x in (tmp_path / f).read_text().splitlines()] for f in "ab"]
    assert outputs[0] != outputs[1]  # the examples change what the model writes


def test_numeric_metric_end_to_end(tmp_path, monkeypatch):
    from loramix.evaluate import generation

    rows = [
        {"prompt": "a", "completion": " 6", "answer": 6},
        {"prompt": "b", "completion": " it is 7.5"},
        {"prompt": "c", "completion": " 3", "answer": 3},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    outputs = [" so 6.00001", " about 7.5 apples", " 4"]
    monkeypatch.setattr(generation, "generate", lambda *a, **k: [generation.Generated(o, 2) for o in outputs])
    result = _eval("-d", tmp_path / "d.jsonl", "-m", "numeric", "--json", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["correct"] == 2
