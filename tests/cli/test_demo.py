"""`loramix demo --quick` end to end (the README's first command), and its folder rules."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.core import models
from loramix.demo import plan

pytestmark = pytest.mark.slow  # runs every step of the demo, on a smaller budget than --quick

BUDGET = {"rows": 200, "eval": 16, "tune_epochs": 1}

runner = CliRunner(env={"COLUMNS": "1000"})
NAMES = [
    "base",
    "math",
    "code",
    "data mix",
    "data mix, CAT's 5%",
    "CAT",
    "tuned CAT",
    "linear .5/.5",
    "cat 1/1",
    "ties",
    "dare_ties",
]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    with pytest.MonkeyPatch.context() as mp:  # every step still runs, on fewer rows and eval items
        mp.setitem(plan.BUDGETS, "quick", BUDGET)
        result = runner.invoke(app, ["demo", "--quick", "--threads", "1", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    return out, result


def test_the_table_has_every_model(quick):
    out, result = quick
    rows = [
        line.strip().split("  ")[0]
        for line in result.stdout.splitlines()
        if line.startswith("  ") and line.rstrip().endswith("%")
    ]
    assert [r for r in rows if r in NAMES] == NAMES
    doc = json.loads((out / "demo.json").read_text())
    assert [r["model"] for r in doc["rows"]] == NAMES
    for row in doc["rows"]:
        assert all(0 <= row[task] <= 1 for task in ("math-code", "math", "code"))
    own = {skill: next(r[skill] for r in doc["rows"] if r["model"] == skill) for skill in ("math", "code")}
    for row in doc["rows"]:  # retention: the share of the skill LoRA's own accuracy
        for skill, score in own.items():
            assert row["retention"][skill] == (pytest.approx(row[skill] / score) if score else None)
    assert "CAT's gain on math-code over the base" in result.stdout and "α per layer and module" in result.stdout
    best = max(doc["rows"], key=lambda r: r["math-code"])
    assert f"Best on math-code: {best['model']} ({100 * best['math-code']:.1f}%)" in result.stdout
    assert f"loramix fit-cat {out}/math {out}/code" in result.stdout  # the shell equivalents, unwrapped
    for task in ("math-code", "math", "code"):
        assert json.loads((out / f"eval-{task}.json").read_text())["items"] == BUDGET["eval"]


def test_every_adapter_it_wrote_reloads_in_peft(quick):
    from peft import PeftModel

    out, _ = quick
    base = models.load_model(models.bundled_path(), torch.float32, "cpu")
    ids = torch.randint(3, 900, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    folders = [folder for _, folder in plan.models_in_order() if folder]
    assert len(folders) == 10
    for folder in folders:
        model = PeftModel.from_pretrained(base, out / folder)
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        assert torch.isfinite(logits).all(), folder
        assert not torch.allclose(logits, plain), folder  # the adapter is there and does something
        base = model.unload()


def test_the_equal_data_mix_trains_on_exactly_the_rows_cat_samples(quick):
    from loramix.core.data import Dataset
    from loramix.soup.fit import CatConfig, sample_rows

    out, _ = quick
    cat = json.loads((out / "cat" / "cat_weights.json").read_text())
    samples, _ = sample_rows(
        CatConfig(adapters=[], data=[d["data"] for d in cat["data"]], out=out / "x", fraction=cat["fraction"], seed=0)
    )
    rows = [row for _, part in samples for row in part]
    log = json.loads((out / "mix-sample" / "train_log.json").read_text())
    assert log["rows"] == len(rows) == sum(d["used"] for d in cat["data"])
    assert log["data_sha256"] == Dataset("x", rows).digest
    tuned = json.loads((out / "tuned-cat" / "cat_weights.json").read_text())
    assert tuned["method"] == "tuned-cat" and tuned["tune"]["steps"] > 0 and tuned["data"] == cat["data"]


def test_an_existing_folder_needs_force_and_must_be_a_demo(quick, tmp_path):
    out, _ = quick
    again = runner.invoke(app, ["demo", "--quick", "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep")
    forced = runner.invoke(app, ["demo", "--quick", "-o", str(tmp_path / "mine"), "--force"])
    assert forced.exit_code == 2 and "is not a loramix demo folder" in forced.stderr
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep"
