"""fit-cat's other methods on loramix-tiny: lorahub (a seeded CMA-ES search written as an exact
linear merge), moe and arrow (routed mixtures that eval and inspect read), and the data sample
`loramix data --fraction --seed` shares with fit-cat."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.core import models, routing
from loramix.core.adapters import read_adapter
from tests.helpers import make_adapter

runner = CliRunner(env={"COLUMNS": "1000"})
FIT = ["-d", "builtin:math", "-d", "builtin:code", "--fraction", "0.01", "--batch-size", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("compose")
    base = models.bundled_path()
    a = make_adapter(base, root / "a", r=4, alpha=8, seed=1, scale_b=0.1)
    b = make_adapter(base, root / "b", r=2, alpha=4, seed=2, scale_b=0.1, targets=["q_proj", "v_proj", "up_proj"])
    for folder in (a, b):
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "loramix-tiny"
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return a, b


def _fit(pair, out, *extra):
    result = runner.invoke(app, ["fit-cat", *map(str, pair), *FIT, *extra, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow  # three searches
def test_lorahub_is_reproducible_with_a_seed_and_writes_the_linear_merge_of_its_weights(pair, tmp_path):
    one = _fit(pair, tmp_path / "one", "-m", "lorahub", "--budget", "12", "--seed", "4")
    two = _fit(pair, tmp_path / "two", "-m", "lorahub", "--budget", "12", "--seed", "4")
    other = _fit(pair, tmp_path / "other", "-m", "lorahub", "--budget", "6", "--seed", "5")
    assert one["method"] == "lorahub" and one["granularity"] == "global" and one["steps"] == 12
    assert one["alpha"] == two["alpha"] and one["loss_curve"] == two["loss_curve"]
    assert one["alpha"] != other["alpha"] and one["loss_curve"][:6] != other["loss_curve"]
    w = one["alpha"][0]
    assert all(-1.5 <= x <= 1.5 for x in w)
    a, b = (read_adapter(p) for p in pair)
    merged = read_adapter(tmp_path / "one")
    for name, m in merged.modules.items():
        expected = sum(wi * ad.modules[name].delta() for wi, ad in zip(w, (a, b)) if name in ad.modules)
        torch.testing.assert_close(m.delta(), expected, atol=1e-5, rtol=1e-4)


def test_moe_trains_only_the_routers_and_eval_scores_the_mixture(pair, tmp_path):
    doc = _fit(pair, tmp_path / "moe", "-m", "moe", "--steps", "3", "--lr", "0.05")
    folder = tmp_path / "moe"
    assert doc["method"] == "moe" and doc["steps"] == 3 and doc["granularity"] == "layer"
    assert len(doc["groups"]) == 8 and all(abs(sum(row) - 1) < 1e-4 for row in doc["alpha"])
    manifest = json.loads((folder / routing.MANIFEST).read_text())
    assert manifest["kind"] == "learned" and manifest["fit"]["method"] == "moe"
    for i, p in enumerate(pair):  # the experts are the adapters, copied unchanged
        copy = routing.expert_folder(folder, i) / "adapter_model.safetensors"
        assert copy.read_bytes() == (p / "adapter_model.safetensors").read_bytes()
    routers = load_file(str(folder / routing.ROUTER_FILE))
    assert any(t.abs().sum() > 0 for t in routers.values())  # trained away from zero
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 0 and "mean routing" in result.stdout and "mixture" in result.stdout


def test_eval_of_a_mixture_routed_to_one_expert_equals_that_adapter(pair, tmp_path):
    _fit(pair, tmp_path / "moe", "-m", "moe", "--steps", "1")
    file = tmp_path / "moe" / routing.ROUTER_FILE
    tensors = load_file(str(file))
    for key in tensors:
        if key.endswith(".bias"):
            tensors[key] = torch.tensor([60.0, 0.0])  # every token to expert 0 (adapter a)
        else:
            tensors[key] = torch.zeros_like(tensors[key])
    save_file(tensors, str(file))
    args = ["eval", "-d", "builtin:math", "--limit", "6", "-m", "loss", "--threads", "1", "--json"]
    result = runner.invoke(app, [*args, "-a", str(tmp_path / "moe"), "-a", str(pair[0]), "-a", str(pair[1])])
    assert result.exit_code == 0, result.stderr
    scores = {m["name"]: m["score"] for m in json.loads(result.stdout)["models"]}
    assert scores["moe"] == pytest.approx(scores["a"], rel=1e-5)
    assert abs(scores["moe"] - scores["b"]) > 1e-3 and abs(scores["a"] - scores["base"]) > 1e-3


def test_arrow_needs_no_training_and_writes_a_mixture(pair, tmp_path):
    doc = _fit(pair, tmp_path / "arrow", "-m", "arrow", "--top-k", "1")
    assert doc["method"] == "arrow" and doc["steps"] == 0 and doc["best_val_loss"] is not None
    manifest, experts, _ = routing.load(tmp_path / "arrow")
    assert manifest.kind == "arrow" and manifest.top_k == 1 and len(experts) == 2
    merged = runner.invoke(
        app, ["merge", str(tmp_path / "arrow"), str(pair[0]), "-m", "linear", "-o", str(tmp_path / "m")]
    )
    assert merged.exit_code == 2 and "is a routed mixture (fit-cat -m moe or arrow), not an adapter" in merged.stderr
    assert not (tmp_path / "m").exists()


def test_tuned_cat_trains_the_merged_adapter_which_its_alpha_table_cannot_rebuild(pair, tmp_path):
    cat = _fit(pair, tmp_path / "cat", "--steps", "2", "--val-fraction", "0")
    tuned = _fit(
        pair, tmp_path / "tuned", "-m", "tuned-cat", "--steps", "2", "--val-fraction", "0", "--tune-epochs", "1"
    )
    assert tuned["method"] == "tuned-cat" and tuned["alpha"] == cat["alpha"]  # the same α, then the tuning
    assert tuned["tune"]["steps"] == len(tuned["tune"]["loss_curve"]) > 0 and tuned["tune"]["lr"] == 1e-3
    plain, trained = read_adapter(tmp_path / "cat"), read_adapter(tmp_path / "tuned")
    assert plain.modules.keys() == trained.modules.keys()
    assert all(not torch.allclose(m.delta(), trained.modules[n].delta()) for n, m in plain.modules.items())
    result = runner.invoke(
        app, ["merge", "-m", "cat", "--cat-weights", str(tmp_path / "tuned"), "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "comes from fit-cat -m tuned-cat" in result.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-m", "lorahub", "--budget", "0"], "--budget 0: must be at least 1"),
        (["-m", "arrow", "--top-k", "3"], "--top-k 3: must be from 1 to the number of adapters (2)"),
        (["-m", "arrow", "--temperature", "0"], "--temperature 0.0: must be a positive number"),
        (["-m", "moe", "--fsdp"], "--method moe runs on one device"),
        (["-m", "moes"], "Did you mean 'moe'?"),
    ],
)
def test_bad_method_options_are_refused_and_nothing_is_written(pair, tmp_path, extra, message):
    result = runner.invoke(app, ["fit-cat", *map(str, pair), *FIT, *extra, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_data_fraction_writes_exactly_the_rows_fit_cat_samples(tmp_path):
    from loramix.soup.fit import CatConfig, sample_rows

    out = tmp_path / "sample.jsonl"
    sources = ["builtin:math", "builtin:code"]
    result = runner.invoke(app, ["data", *sources, "--fraction", "0.02", "--seed", "3", "--dump", str(out)])
    assert result.exit_code == 0, result.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    samples, info = sample_rows(CatConfig(adapters=[], data=sources, out=tmp_path / "x", fraction=0.02, seed=3))
    assert written == [row for _, rows in samples for row in rows]
    assert len(written) == sum(d.used for d in info) == 160
    other = sample_rows(CatConfig(adapters=[], data=sources, out=tmp_path / "x", fraction=0.02, seed=4))[0]
    assert written != [row for _, rows in other for row in rows]


def test_balance_splits_the_same_total_evenly_and_data_writes_those_rows(tmp_path):
    """manual has 8000 rows and instruct 4000: 2% is 160 + 80 rows, balanced 120 + 120, the same
    240 in all; `data --balance` writes exactly fit-cat --balance's rows."""
    from loramix.soup.fit import CatConfig, sample_rows

    sources = ["builtin:manual", "builtin:instruct"]

    def sample(balance):
        config = CatConfig(adapters=[], data=sources, out=tmp_path / "x", fraction=0.02, seed=3, balance=balance)
        return sample_rows(config)

    plain, even = sample(False), sample(True)
    assert [d.used for d in plain[1]] == [160, 80] and [d.used for d in even[1]] == [120, 120]
    assert len({json.dumps(r) for _, rows in even[0] for r in rows}) == 240
    out = tmp_path / "even.jsonl"
    args = ["data", *sources, "--fraction", "0.02", "--seed", "3", "--balance", "--dump", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == [r for _, rows in even[0] for r in rows]
    refused = runner.invoke(app, ["data", *sources, "--balance", "--dump", str(tmp_path / "no.jsonl")])
    assert refused.exit_code == 2 and "give --fraction too" in refused.stderr
    assert not (tmp_path / "no.jsonl").exists()


def test_balance_caps_a_source_at_the_rows_it_has():
    from loramix.core import data

    rows = [{"prompt": str(i), "completion": "x"} for i in range(10)]
    small = data.Dataset("small", rows)
    big = data.Dataset("big", rows * 100)
    import unittest.mock as mock

    with mock.patch.object(data, "load", side_effect=lambda s: {"small": small, "big": big}[s]):
        parts = data.sample(["small", "big"], 0.5, seed=0, balance=True)
    assert [len(p) for _, p in parts] == [10, 253]  # ceil((5 + 500) / 2) = 253; small has 10


def test_fit_cat_records_a_balanced_sample(pair, tmp_path):
    args = ["-d", "builtin:manual", "-d", "builtin:instruct", "--fraction", "0.01", "--balance", "--steps", "1"]
    result = runner.invoke(
        app,
        ["fit-cat", *map(str, pair), *args, "--batch-size", "8", "--threads", "1", "-o", str(tmp_path / "o"), "--json"],
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["balance"] is True and [d["used"] for d in doc["data"]] == [60, 60]
    assert doc["rows_train"] + doc["rows_val"] == 120
