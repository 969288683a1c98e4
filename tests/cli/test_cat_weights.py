"""fit-cat's α table used again: `merge -m cat --cat-weights`, fit-cat `--rank`, `inspect` on a result."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.core import models
from loramix.core.adapters import read_adapter
from tests.helpers import make_adapter

pytestmark = pytest.mark.slow  # fits CAT three ways first

runner = CliRunner(env={"COLUMNS": "1000"})
FIT = ["--data", "builtin:math", "--fraction", "0.01", "--batch-size", "8", "--val-fraction", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def soups(tmp_path_factory):
    """Two random adapters on loramix-tiny (different ranks and targets, one with a rank_pattern) and
    four fit-cat results on them: layer/free, layer/softmax (a layer where b lacks modules shares
    α among the adapters each module has), module/softmax and rank/free."""
    root = tmp_path_factory.mktemp("cat-weights")
    base = models.bundled_path()
    a = make_adapter(base, root / "a", r=4, alpha=8, seed=1, scale_b=0.1)
    b = make_adapter(
        base,
        root / "b",
        r=2,
        alpha=4,
        seed=2,
        scale_b=0.1,
        targets=["q_proj", "v_proj"],
        rank_pattern={"v_proj": 6},
        alpha_pattern={"v_proj": 3},
    )
    for folder in (a, b):
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "loramix-tiny"
        (folder / "adapter_config.json").write_text(json.dumps(config))
    out = {"a": a, "b": b, "root": root}
    for name, extra in (
        ("layer", ["--granularity", "layer", "--init", "1", "--lr", "0.2"]),
        ("softmax", ["--granularity", "layer", "--param", "softmax", "--lr", "1"]),
        ("module", ["--granularity", "module", "--param", "softmax", "--lr", "1"]),
        ("rank", ["--granularity", "rank", "--lr", "0.2"]),
    ):
        result = runner.invoke(app, ["fit-cat", str(a), str(b), *FIT, "--steps", "3", *extra, "-o", str(root / name)])
        assert result.exit_code == 0, result.stderr
        out[name] = root / name
    return out


def _deltas(folder):
    return {n: m.scale * m.B.float() @ m.A.float() for n, m in read_adapter(folder).modules.items()}


def _merge(*args):
    return runner.invoke(app, ["merge", *map(str, args), "--json"])


@pytest.mark.parametrize("soup", ["layer", "softmax", "module"])
def test_the_table_rebuilds_fit_cats_adapter(soups, tmp_path, soup):
    doc = json.loads((soups[soup] / "cat_weights.json").read_text())
    moved = [v for row in doc["alpha"] for v in row if v is not None]
    assert max(abs(v - moved[0]) for v in moved) > 1e-3  # α was learned, not left at its start
    result = _merge("-m", "cat", "--cat-weights", soups[soup], "-o", tmp_path / "rebuilt")  # adapters: the table's
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["exact"] and report["cat_weights"] == str(soups[soup]) and report["weights"] is None
    fitted, rebuilt = _deltas(soups[soup]), _deltas(tmp_path / "rebuilt")
    assert fitted.keys() == rebuilt.keys() and len(fitted) == 56
    for name in fitted:
        assert torch.allclose(rebuilt[name], fitted[name], rtol=1e-5, atol=1e-7), name


def test_an_edited_table_is_what_gets_merged(soups, tmp_path):
    doc = json.loads((soups["layer"] / "cat_weights.json").read_text())
    doc["alpha"] = [[2.0, 0.0] for _ in doc["groups"]]
    doc["alpha"][3] = [0.5, -1.0]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    result = _merge(soups["a"], soups["b"], "--cat-weights", edited, "-o", tmp_path / "out")  # -m cat implied
    assert result.exit_code == 0, result.stderr
    a, b, merged = _deltas(soups["a"]), _deltas(soups["b"]), _deltas(tmp_path / "out")
    for name, delta in merged.items():
        wa, wb = (0.5, -1.0) if ".layers.3." in name else (2.0, 0.0)
        expected = wa * a[name] + (wb * b[name] if name in b else 0)
        assert torch.allclose(delta, expected, rtol=1e-5, atol=1e-7), name


def test_rank_truncates_the_same_way_in_fit_cat_and_merge(soups, tmp_path):
    a, b = soups["a"], soups["b"]
    fitted = runner.invoke(
        app,
        [
            "fit-cat",
            str(a),
            str(b),
            *FIT,
            "--steps",
            "3",
            "--granularity",
            "layer",
            "--init",
            "1",
            "--lr",
            "0.2",
            "--rank",
            "3",
            "-o",
            str(tmp_path / "fit3"),
            "--json",
        ],
    )
    assert fitted.exit_code == 0, fitted.stderr
    doc = json.loads(fitted.stdout)
    assert doc["rank"] == {"min": 3, "max": 3} and 0 < doc["svd_error"]["mean"] <= doc["svd_error"]["max"] < 1
    config = json.loads((tmp_path / "fit3" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 3 and not config["rank_pattern"]
    merged = _merge("--cat-weights", soups["layer"], "--rank", "3", "-o", tmp_path / "merge3")
    assert merged.exit_code == 0, merged.stderr
    assert json.loads(merged.stdout)["error"]["max"] == pytest.approx(doc["svd_error"]["max"], rel=1e-4)
    one, other = _deltas(tmp_path / "fit3"), _deltas(tmp_path / "merge3")
    for name in one:
        assert torch.allclose(one[name], other[name], rtol=1e-4, atol=1e-6), name


def _bad_table(soups, tmp_path, edit):
    doc = json.loads((soups["layer"] / "cat_weights.json").read_text())
    edit(doc)
    path = tmp_path / "table.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda s, t: [s["b"], s["a"], "--cat-weights", s["layer"]], "is the table's adapter 2, given as 1"),
        (
            lambda s, t: [s["a"], s["layer"], "--cat-weights", s["layer"]],
            "is not an adapter cat_weights.json was fitted with",
        ),
        (lambda s, t: [s["a"], "--cat-weights", s["layer"]], "was fitted with 2 adapters, got 1"),
        (lambda s, t: ["-m", "ties", "--cat-weights", s["layer"]], "--cat-weights applies to -m cat, not -m ties"),
        (
            lambda s, t: ["--weights", "1,1", "--cat-weights", s["layer"]],
            "--weights and --cat-weights both set the weights",
        ),
        (lambda s, t: ["--cat-weights", t / "missing.json"], "missing.json: no such file"),
        (lambda s, t: ["--cat-weights", s["a"] / "adapter_config.json"], "adapter_config.json: not a fit-cat α table"),
        (
            lambda s, t: ["--cat-weights", _bad_table(s, t, lambda d: d["alpha"][0].__setitem__(1, "x"))],
            "group 0: 'x' is not a finite number",
        ),
        (lambda s, t: ["--cat-weights", _bad_table(s, t, lambda d: d["alpha"].pop())], "alpha has 7 rows for 8 groups"),
        (
            lambda s, t: ["--cat-weights", _bad_table(s, t, lambda d: d.__setitem__("alpha", 5))],
            "alpha has no list of rows",
        ),
        (
            lambda s, t: ["--cat-weights", _bad_table(s, t, lambda d: d["adapters"][0].pop("sha256"))],
            'adapter 1 needs "name", "path" and "sha256" strings',
        ),
        (
            lambda s, t: ["--cat-weights", _bad_table(s, t, lambda d: d.update(param="softmax", alpha=[[0, 0]] * 8))],
            "group 0: softmax shares must be positive",
        ),
        (
            lambda s, t: [
                "--cat-weights",
                _bad_table(s, t, lambda d: d["adapters"][1].__setitem__("path", str(t / "gone"))),
            ],
            "its adapter " + "{t}/gone is gone",
        ),
    ],
)
def test_bad_tables_and_adapters_are_refused(soups, tmp_path, args, message):
    result = _merge(*args(soups, tmp_path), "-o", tmp_path / "out")
    assert result.exit_code == 2, result.stdout
    assert message.format(t=tmp_path) in result.stderr
    assert not (tmp_path / "out").exists()


def test_inspect_draws_the_alpha_heatmap(soups):
    result = runner.invoke(app, ["inspect", str(soups["layer"])])
    assert result.exit_code == 0, result.stderr
    assert "α per layer" in result.stdout and "scale" in result.stdout and str(soups["a"]) in result.stdout
    doc = json.loads((soups["layer"] / "cat_weights.json").read_text())
    report = json.loads(runner.invoke(app, ["inspect", str(soups["layer"] / "cat_weights.json"), "--json"]).stdout)
    assert report["heatmap"] == {"rows": [str(i) for i in range(8)], "cols": ["a", "b"], "values": doc["alpha"]}


def test_inspect_lays_module_alpha_out_as_layers_by_adapter_and_module(soups):
    report = json.loads(runner.invoke(app, ["inspect", str(soups["module"]), "--json"]).stdout)
    grid = report["heatmap"]
    kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert grid["cols"] == [f"a {k}" for k in kinds] + ["b q_proj", "b v_proj"] and len(grid["rows"]) == 8
    doc = json.loads((soups["module"] / "cat_weights.json").read_text())
    alpha = dict(zip(doc["groups"], doc["alpha"]))
    assert grid["values"][5][2] == alpha["model.layers.5.self_attn.v_proj"][0]
    assert grid["values"][5][8] == alpha["model.layers.5.self_attn.v_proj"][1]
    assert grid["values"][5][7] == alpha["model.layers.5.self_attn.q_proj"][1]
    text = runner.invoke(app, ["inspect", str(soups["module"])]).stdout
    assert "α per layer and module" in text and "b v" in text


def test_inspect_shows_a_hand_made_table(soups, tmp_path):
    doc = {
        "command": "fit-cat",
        "granularity": "global",
        "param": "free",
        "groups": ["all"],
        "alpha": [[0.7, 0.2]],
        "adapters": [
            {"name": "a", "path": str(soups["a"]), "sha256": "x"},
            {"name": "b", "path": str(soups["b"]), "sha256": "y"},
        ],
    }
    (tmp_path / "t.json").write_text(json.dumps(doc))
    result = runner.invoke(app, ["inspect", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.stderr
    assert "0.7" in result.stdout and "0.2" in result.stdout and "global, free" in result.stdout


def test_a_rank_slot_fit_weighs_each_component_and_its_table_rebuilds_it(soups, tmp_path):
    """Ranks a 4, b 2 (v_proj 6): q_proj has 4 slot rows with b's cells null from slot 2, v_proj 6
    with a's null from slot 4; the adapter written is Σ α[slot j, i] · s_i · b_ij a_ijᵀ."""
    doc = json.loads((soups["rank"] / "cat_weights.json").read_text())
    alpha = dict(zip(doc["groups"], doc["alpha"]))
    q, v = "model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj"
    assert [f"{q}#{j}" in alpha for j in range(5)] == [True] * 4 + [False]
    assert alpha[f"{q}#2"][1] is None and alpha[f"{v}#4"][0] is None and alpha[f"{v}#5"][1] is not None
    moved = [x for row in doc["alpha"] for x in row if x is not None]
    assert max(abs(x - moved[0]) for x in moved) > 1e-3
    skills = [read_adapter(soups["a"]), read_adapter(soups["b"])]
    fitted = _deltas(soups["rank"])
    assert len(fitted) == 56
    for name, delta in fitted.items():
        expected = sum(
            alpha[f"{name}#{j}"][i] * m.scale * torch.outer(m.B[:, j].float(), m.A[j].float())
            for i, m in enumerate(s.modules.get(name) for s in skills)
            if m is not None
            for j in range(m.rank)
        )
        assert torch.allclose(delta, expected, rtol=1e-5, atol=1e-7), name
    result = _merge("-m", "cat", "--cat-weights", soups["rank"], "-o", tmp_path / "rebuilt")
    assert result.exit_code == 0, result.stderr
    rebuilt = _deltas(tmp_path / "rebuilt")
    assert rebuilt.keys() == fitted.keys()
    for name in fitted:
        assert torch.allclose(rebuilt[name], fitted[name], rtol=1e-5, atol=1e-7), name
    doc["alpha"][doc["groups"].index(f"{v}#5")][1] = None  # b's slot 5 of v_proj left without α
    (tmp_path / "holed.json").write_text(json.dumps(doc))
    holed = _merge("--cat-weights", tmp_path / "holed.json", "-o", tmp_path / "out")
    assert holed.exit_code == 2 and f"has no α for slot 5 of {v} in adapter 2" in holed.stderr
    assert not (tmp_path / "out").exists()
    grid = json.loads(runner.invoke(app, ["inspect", str(soups["rank"]), "--json"]).stdout)["heatmap"]
    a_v = sum(alpha[f"{v}#{j}"][0] for j in range(4)) / 4
    assert grid["values"][2][2] == pytest.approx(a_v) and len(grid["rows"]) == 8
    assert "mean over rank slots" in runner.invoke(app, ["inspect", str(soups["rank"])]).stdout
