"""`--json` output is a stable interface: every command's document keeps its keys, their order,
their types and its layout. Each is compared with a recorded document (tests/cli/golden/), with
paths and timings normalised and floats compared to a relative 1e-4.

Rewrite the recorded documents (only when a change to the output is intended, and say so in the
CHANGELOG) with: LORAMIX_WRITE_GOLDEN=1 python -m pytest tests/cli/test_json_output.py
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramix.cli.app import app
from tests.helpers import make_adapter, tiny_llama

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "golden"
TIMINGS = {"seconds", "tokens_per_second", "total_seconds"}
runner = CliRunner(env={"COLUMNS": "1000"})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    base = tiny_llama(root / "base")
    a = make_adapter(base, root / "a", r=4, alpha=8, seed=1)
    b = make_adapter(base, root / "b", r=6, alpha=3, seed=2, use_rslora=True)
    skill = _ok(
        [
            "train-skill",
            "builtin:math",
            "-o",
            str(root / "skill"),
            "--limit",
            "48",
            "--batch-size",
            "8",
            "--rank",
            "4",
            "--max-steps",
            "2",
            "--threads",
            "1",
            "--json",
        ]
    )
    from loramix.core import models

    noise = make_adapter(models.bundled_path(), root / "noise", r=2, alpha=2, seed=7, scale_b=0.5)
    config = json.loads((noise / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "loramix-tiny"
    (noise / "adapter_config.json").write_text(json.dumps(config))
    return {"root": root, "base": base, "a": a, "b": b, "skill": root / "skill", "noise": noise, "train": skill}


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def _cases(w: dict) -> dict[str, list[str]]:
    r, a, b = w["root"], str(w["a"]), str(w["b"])
    return {
        "merge_linear": ["merge", a, b, "-m", "linear", "-w", "1,0.5", "-o", str(r / "lin"), "--json"],
        "merge_ties": ["merge", a, b, "-m", "ties", "--density", "0.5", "--rank", "4", "-o", str(r / "ties"), "--json"],
        "merge_into_base": [
            "merge",
            a,
            b,
            "-m",
            "dare_linear",
            "--into-base",
            str(w["base"]),
            "-o",
            str(r / "full"),
            "--json",
        ],
        "merge_methods": ["merge", "--list-methods", "--json"],
        "inspect_adapter": ["inspect", a, "--json"],
        "inspect_compare": ["inspect", a, b, "--json"],
        "data_skills": ["data", "--json"],
        "fit_cat": [
            "fit-cat",
            str(w["skill"]),
            str(w["noise"]),
            "-d",
            "builtin:math",
            "--fraction",
            "0.02",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--threads",
            "1",
            "-o",
            str(r / "cat"),
            "--json",
        ],
        "inspect_cat": ["inspect", str(r / "cat"), "--json"],
        "eval_exact": [
            "eval",
            "-d",
            "builtin:math",
            "--limit",
            "4",
            "-a",
            str(w["skill"]),
            "--threads",
            "1",
            "--max-new-tokens",
            "8",
            "--json",
        ],
        "eval_loss": [
            "eval",
            "-d",
            "builtin:code",
            "--limit",
            "4",
            "-a",
            str(w["skill"]),
            "-m",
            "loss",
            "--threads",
            "1",
            "--json",
        ],
    }


def test_every_json_document_keeps_its_shape(work):
    outputs = {"train_skill": work["train"]}
    for name, args in _cases(work).items():  # in order: inspect_cat reads fit_cat's folder
        outputs[name] = _ok(args)
    write = os.environ.get("LORAMIX_WRITE_GOLDEN") == "1"
    for name, text in outputs.items():
        assert text == json.dumps(json.loads(text), indent=2) + "\n", f"{name}: not indent-2 JSON on one document"
        doc = normalise(json.loads(text), work["root"])
        path = GOLDEN / f"{name}.json"
        if write:
            GOLDEN.mkdir(exist_ok=True)
            path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            continue
        expected = json.loads(path.read_text(encoding="utf-8"))
        same(doc, expected, name)


def normalise(doc, root: Path):
    """Paths under the test folder and the bundled model's folder become placeholders; timings 0."""
    from loramix.core import models

    places = [(str(root), "<tmp>"), (str(models.bundled_path()), "<bundled>")]

    def walk(x, key=None):
        if isinstance(x, dict):
            return {k: walk(v, k) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if key in TIMINGS and isinstance(x, (int, float)):
            return 0
        if isinstance(x, str):
            for real, token in places:
                x = x.replace(real, token)
            return re.sub(r"<tmp>/\.[^/]*\.tmp-[0-9a-f]+", "<tmp>/<partial>", x)
        return x

    return walk(doc)


def same(got, want, where: str) -> None:
    """Equal keys in the same order, equal types and strings, floats within a relative 1e-4."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: expected an object"
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{where}: {got!r} is not a number"
        assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6), f"{where}: {got!r} != {want!r}"
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"
