"""`loramix fit-cat` end to end on loramix-tiny: what α learns, the written adapter, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.core import models
from loramix.core.adapters import read_adapter
from loramix.soup import layer
from tests.helpers import make_adapter

pytestmark = pytest.mark.slow  # trains a skill LoRA, then fits CAT in most tests

runner = CliRunner(env={"COLUMNS": "1000"})
QUICK = ["--threads", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def skills(tmp_path_factory):
    """A math LoRA trained briefly, a random-noise LoRA and a zero LoRA, all on loramix-tiny."""
    root = tmp_path_factory.mktemp("skills")
    result = runner.invoke(
        app,
        [
            "train-skill",
            "builtin:math",
            "-o",
            str(root / "math"),
            "--rank",
            "4",
            "--limit",
            "320",
            "--lr",
            "3e-3",
            "--val-fraction",
            "0",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.stderr
    base = models.bundled_path()
    noise = make_adapter(base, root / "noise", r=4, alpha=4, seed=7, scale_b=0.5)
    zero = make_adapter(base, root / "zero", r=2, alpha=2, seed=8, scale_b=0.0)
    for folder in (noise, zero):  # record the base the way train-skill does
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "loramix-tiny"
        (folder / "adapter_config.json").write_text(json.dumps(config))
    import shutil

    shutil.copytree(root / "math", root / "math-twin")
    return {"math": root / "math", "twin": root / "math-twin", "noise": noise, "zero": zero}


def _fit(out, *args):
    """fit-cat with the paper's α per layer from 1 unless the test sets them (the assertions count
    layers and measure α from 1; the defaults are module and 1/k)."""
    args = tuple(map(str, args))
    pinned = [o for o, v in (("--granularity", "layer"), ("--init", "1")) if o not in args for o in (o, v)]
    return runner.invoke(app, ["fit-cat", *args, *pinned, "-o", str(out), *QUICK, "--json"])


def _alpha(result):
    assert result.exit_code == 0, result.stderr
    return torch.tensor(json.loads(result.stdout)["alpha"])


def test_a_useless_adapter_is_switched_off(skills, tmp_path):
    doc_alpha = _alpha(
        _fit(
            tmp_path / "soup",
            skills["math"],
            skills["noise"],
            "--data",
            "builtin:math",
            "--fraction",
            "0.05",
            "--lr",
            "0.05",
            "--epochs",
            "2",
            "--val-fraction",
            "0",
        )
    )
    noise, useful = doc_alpha[:, 1].abs(), doc_alpha[:, 0]
    assert (noise < 0.5).sum() >= 6, doc_alpha  # of 8 layers, from 1.0
    assert (useful > 0.5).all(), doc_alpha


def test_global_alpha_on_twins_sums_to_the_single_adapters_optimum(skills, tmp_path):
    args = [
        "--data",
        "builtin:math",
        "--fraction",
        "0.05",
        "--lr",
        "0.05",
        "--epochs",
        "2",
        "--val-fraction",
        "0",
        "--granularity",
        "global",
        "--init",
        "0.5",
    ]
    twins = _alpha(_fit(tmp_path / "twins", skills["math"], skills["twin"], *args))
    single = _alpha(_fit(tmp_path / "single", skills["math"], skills["zero"], *args))
    assert twins.shape == (1, 2) and single[0, 1] == pytest.approx(0.5)  # a zero adapter gets no gradient
    assert float(twins.sum()) == pytest.approx(float(single[0, 0]), abs=0.1), (twins, single)


def test_the_written_adapter_is_the_fitted_model(skills, tmp_path):
    from peft import PeftModel

    result = _fit(
        tmp_path / "soup",
        skills["math"],
        skills["noise"],
        skills["zero"],
        "--data",
        "builtin:math",
        "--data",
        "builtin:code",
        "--fraction",
        "0.02",
        "--granularity",
        "module",
        "--param",
        "softmax",
    )
    alpha = _alpha(result)
    doc = json.loads((tmp_path / "soup" / "cat_weights.json").read_text())
    assert [a["name"] for a in doc["adapters"]] == ["math", "noise", "zero"] and len(doc["groups"]) == 56
    assert torch.allclose(alpha.sum(dim=1), torch.ones(56), atol=1e-4)
    assert torch.allclose(load_file(str(tmp_path / "soup" / "cat_weights.safetensors"))["alpha"], alpha, atol=1e-5)
    config = json.loads((tmp_path / "soup" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 10 and config["base_model_name_or_path"] == "loramix-tiny"
    ids = torch.randint(3, 900, (2, 16), generator=torch.Generator().manual_seed(0))
    base = models.load_model(models.bundled_path(), torch.float32, "cpu")
    with torch.no_grad():
        reloaded = PeftModel.from_pretrained(base, tmp_path / "soup")(input_ids=ids).logits
        fitted = models.load_model(models.bundled_path(), torch.float32, "cpu")
        a, _, _ = layer.wrap(fitted, [read_adapter(skills[k]) for k in ("math", "noise", "zero")], "module", "free")
        a.raw.copy_(alpha)
        assert torch.allclose(fitted(input_ids=ids).logits, reloaded, atol=1e-4)


def test_four_bit_base_fits_on_the_cpu(skills, tmp_path):
    result = _fit(
        tmp_path / "q",
        skills["math"],
        skills["noise"],
        "--data",
        "builtin:math",
        "--fraction",
        "0.02",
        "--load-in-4bit",
        "--lr",
        "0.05",
    )
    alpha = _alpha(result)
    assert alpha.shape == (8, 2) and not torch.allclose(alpha, torch.ones(8, 2))
    from peft import PeftModel

    def four_bit():  # kept in train mode with dropout off: an eval-mode 4-bit forward may repack (docs/architecture.md, 4-bit bases)
        return models.load_model(models.bundled_path(), torch.float32, "cpu", load_in_4bit=True).train()

    ids = torch.randint(3, 900, (2, 16), generator=torch.Generator().manual_seed(0))
    reloaded = PeftModel.from_pretrained(four_bit(), tmp_path / "q").train()
    for m in reloaded.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    fitted = four_bit()
    a, _, _ = layer.wrap(fitted, [read_adapter(skills[k]) for k in ("math", "noise")], "layer", "free")
    with torch.no_grad():
        a.raw.copy_(alpha)
        assert torch.allclose(fitted(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-3)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fraction", "0"], "--fraction 0.0: must be in (0, 1]"),
        (["--fraction", "1.5"], "--fraction 1.5: must be in (0, 1]"),
        (["--granularity", "block"], "'block' is not one of 'layer', 'module', 'global', 'rank'"),
        (["--param", "sigmoid"], "'sigmoid' is not one of 'free', 'softmax'"),
        (["--rank", "0"], "--rank 0: must be at least 1"),
        (["--init", "nan"], "--init nan: must be a finite number"),
        (["--steps", "0"], "--steps 0: must be at least 1"),
    ],
)
def test_bad_options(skills, tmp_path, extra, message):
    result = _fit(tmp_path / "o", skills["math"], skills["noise"], "--data", "builtin:math", *extra)
    assert result.exit_code == 2 and message in result.stderr
    assert not list(tmp_path.iterdir())


def test_one_adapter_is_refused(skills, tmp_path):
    result = _fit(tmp_path / "o", skills["math"], "--data", "builtin:math")
    assert result.exit_code == 2 and "fit-cat needs at least two adapters, got 1" in result.stderr


def test_adapters_from_different_bases_are_refused(skills, base_dir, tmp_path):
    other = make_adapter(base_dir, tmp_path / "other", r=2)
    result = _fit(tmp_path / "o", skills["math"], other, "--data", "builtin:math")
    assert result.exit_code == 2 and "adapters for different bases" in result.stderr
    assert not (tmp_path / "o").exists()


def test_the_same_adapter_twice_is_refused(skills, tmp_path):
    result = _fit(tmp_path / "o", skills["math"], skills["math"], "--data", "builtin:math")
    assert result.exit_code == 2 and "the same adapter is given twice" in result.stderr


def test_the_best_validation_alpha_is_the_one_written(skills, tmp_path, monkeypatch):
    """Validation losses dip at the second check: the α of that step is written, not the last."""
    from loramix.soup.fit import TENSOR_NAME
    from loramix.train import loop

    losses, seen = iter([5.0, 4.0, 1.0, 3.0, 3.5, 3.6, 3.7]), {}
    monkeypatch.setattr(loop, "validation_loss", lambda run: next(losses))
    real_fit = loop.fit

    def fit(run, report, stop, on_stop):
        def spy(step, fields):
            if fields and fields.get("val_loss") is not None:
                seen[step] = run.model.cat_alpha.raw.detach().clone()
            report(step, fields)

        return real_fit(run, spy, stop, on_stop)

    monkeypatch.setattr(loop, "fit", fit)
    result = _fit(
        tmp_path / "soup",
        skills["math"],
        skills["noise"],
        "--data",
        "builtin:math",
        "--fraction",
        "0.05",
        "--lr",
        "0.05",
    )
    alpha = _alpha(result)
    doc = json.loads(result.stdout)
    second = sorted(seen)[1]
    assert doc["chosen_step"] == second and doc["best_val_loss"] == 1.0
    assert [v["loss"] for v in doc["val_loss"]][:4] == [5.0, 4.0, 1.0, 3.0] and doc["val_loss"][0]["step"] == 0
    assert torch.allclose(alpha, seen[second], atol=1e-6) and not torch.allclose(alpha, seen[max(seen)])
    written = load_file(str(tmp_path / "soup" / "cat_weights.safetensors"))
    assert torch.allclose(written["raw"], seen[second]) and TENSOR_NAME == "cat_weights.safetensors"


def test_empty_data_is_refused(skills, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = _fit(tmp_path / "o", skills["math"], skills["noise"], "--data", str(empty))
    assert result.exit_code == 2 and "empty.jsonl: no rows" in result.stderr
    assert not (tmp_path / "o").exists()


def test_ctrl_c_writes_the_best_alpha_so_far_and_exits_130(skills, tmp_path, monkeypatch):
    import os
    import signal

    from loramix.train import loop

    real, calls = loop.step_loss, []

    def step_loss(run, batches):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(run, batches)

    monkeypatch.setattr(loop, "step_loss", step_loss)
    result = runner.invoke(
        app,
        [
            "fit-cat",
            str(skills["math"]),
            str(skills["noise"]),
            "--data",
            "builtin:math",
            "--fraction",
            "0.05",
            "-o",
            str(tmp_path / "soup"),
            *QUICK,
        ],
    )
    assert result.exit_code == 130
    assert "interrupted after step 3 of" in result.stderr
    doc = json.loads((tmp_path / "soup" / "cat_weights.json").read_text())
    assert doc["interrupted"] and doc["steps"] == 3 and doc["chosen_step"] == 0  # no validation since step 0
    assert torch.equal(torch.tensor(doc["alpha"]), torch.full((56, 2), 0.5))  # so the initial α (1/k) is written
    assert (tmp_path / "soup" / "adapter_model.safetensors").is_file()


def test_a_data_set_with_no_row_that_fits_is_named(skills, tmp_path):
    long_rows = tmp_path / "long.jsonl"
    long_rows.write_text(('{"prompt": "%s", "completion": " 1"}\n' % ("x " * 400)) * 4)
    result = _fit(
        tmp_path / "o",
        skills["math"],
        skills["noise"],
        "--data",
        "builtin:math",
        "--data",
        str(long_rows),
        "--max-length",
        "64",
    )
    assert result.exit_code == 2 and "long.jsonl: no row has a completion token within --max-length 64" in result.stderr
    assert not (tmp_path / "o").exists()
