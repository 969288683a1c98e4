"""Every refused input through the CLI: exit code 2, one message on stderr that
names the offending file or value and what is wrong with it, and nothing written."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from loramix import __version__
from loramix.cli.app import app
from tests.helpers import make_adapter

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"

runner = CliRunner()  # click >= 8.2 keeps stderr apart: result.stderr


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Text without whitespace: Rich wraps long messages (and paths) at the console width."""
    return "".join(text.split())


def dot_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def says(result, *needles) -> bool:
    return all(flat(str(n)) in flat(result.stderr) for n in needles)


def assert_refused(result, out: Path, *needles) -> None:
    """Exit 2, every needle in the message on stderr, nothing on stdout, nothing written."""
    shown = f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"
    assert result.exit_code == 2, shown
    assert "error" in result.stderr.lower(), shown
    for needle in needles:
        assert flat(str(needle)) in flat(result.stderr), f"{needle!r} not in the message\n{shown}"
    assert "Traceback" not in result.stderr, shown
    assert result.stdout == "", shown
    assert not out.exists(), f"{out} was written"
    assert dot_entries(out.parent) == [], f"temporary folders left in {out.parent}"


# --- building bad adapters -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(adapter_pair):
    return adapter_pair[0]


@pytest.fixture(scope="module")
def other(adapter_pair):
    return adapter_pair[1]


@pytest.fixture(scope="module")
def wide_adapter(base_dir, tmp_path_factory):
    """An adapter made on a base with hidden size 48 (not 32) that claims the usual base."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(root / "base", safe_serialization=True)
    adapter = make_adapter(root / "base", root / "adapter", r=4, alpha=8, seed=3)
    edit_config(adapter, base_model_name_or_path=str(base_dir))
    return adapter


def copy_of(adapter: Path, tmp_path: Path, name: str = "bad") -> Path:
    return Path(shutil.copytree(adapter, tmp_path / name))


def edit_config(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / CONFIG).read_text())
    cfg.update(changes)
    (folder / CONFIG).write_text(json.dumps(cfg))
    return folder


def edit_tensors(folder: Path, edit) -> Path:
    tensors = load_file(str(folder / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    return folder


def merge_with(good: Path, bad: Path, out: Path, *more):
    return invoke("merge", good, bad, "-m", "linear", "-o", out, *more)


# --- the adapter folder itself -------------------------------------------------------------------


def test_missing_adapter_folder(good, tmp_path):
    missing, out = tmp_path / "no-such-adapter", tmp_path / "out"
    assert_refused(merge_with(good, missing, out), out, missing, "no such adapter folder")


def test_file_instead_of_folder(good, tmp_path):
    file, out = tmp_path / "adapter.safetensors", tmp_path / "out"
    shutil.copy(good / WEIGHTS, file)
    assert_refused(merge_with(good, file, out), out, file, "is a file, not an adapter folder")


def test_missing_config(good, tmp_path):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    (bad / CONFIG).unlink()
    assert_refused(merge_with(good, bad, out), out, bad / CONFIG, "missing")


def test_missing_weights(good, tmp_path):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    (bad / WEIGHTS).unlink()
    assert_refused(merge_with(good, bad, out), out, bad / WEIGHTS, "missing")


def test_config_not_json(good, tmp_path):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    (bad / CONFIG).write_text('{"r": 4, "lora_alpha": 8,')
    assert_refused(merge_with(good, bad, out), out, bad / CONFIG, "not valid JSON", "line 1")


def test_config_not_an_object(good, tmp_path):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    (bad / CONFIG).write_text("[4, 8]")
    assert_refused(merge_with(good, bad, out), out, bad / CONFIG, "expected a JSON object, got list")


def test_truncated_safetensors(good, tmp_path):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    data = (bad / WEIGHTS).read_bytes()
    (bad / WEIGHTS).write_bytes(data[: len(data) // 2])
    assert_refused(merge_with(good, bad, out), out, bad / WEIGHTS, "truncated or corrupt")


def test_corrupt_safetensors(good, tmp_path):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    (bad / WEIGHTS).write_bytes(bytes(range(256)) * 40)
    assert_refused(merge_with(good, bad, out), out, bad / WEIGHTS, "truncated or corrupt")


class _Tripwire:
    """Unpickling this creates `path`: proof that somebody loaded the pickle."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_weights_only(good, tmp_path, monkeypatch):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    tensors = load_file(str(bad / WEIGHTS))
    (bad / WEIGHTS).unlink()
    tripwire = tmp_path / "unpickled"
    torch.save({**tensors, "tripwire": _Tripwire(str(tripwire))}, bad / "adapter_model.bin")
    loads = []
    for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(owner, name, lambda *a, _n=name, **k: loads.append(_n) or pytest.fail(f"{_n} called"))
    result = merge_with(good, bad, out)
    assert_refused(result, out, bad / "adapter_model.bin", "pickled weights", "never unpickles")
    assert loads == [] and not tripwire.exists()


# --- what cannot be merged exactly ---------------------------------------------------------------


def test_dora_magnitude_vectors_without_use_dora(good, tmp_path):
    """PEFT would ignore magnitude vectors its config does not ask for: refused, not guessed."""
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    key = f"{Q_PROJ}.lora_magnitude_vector"
    edit_tensors(bad, lambda t: t.update({key: torch.ones(32)}))
    assert_refused(merge_with(good, bad, out), out, bad / WEIGHTS, "DoRA magnitude vectors", "use_dora: false")


def test_use_dora_or_modules_to_save_with_nothing_stored_is_a_plain_lora(good, tmp_path):
    """PEFT gives such an adapter magnitudes equal to the norms and untrained copies: no change."""
    for key, value in (("use_dora", True), ("modules_to_save", ["lm_head"])):
        folder = tmp_path / key
        folder.mkdir()
        odd, out = edit_config(copy_of(good, folder), **{key: value}), tmp_path / f"out-{key}"
        assert merge_with(good, odd, out).exit_code == 0


def test_embedding_lora(good, tmp_path):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    key = "base_model.model.model.embed_tokens.lora_embedding_A"
    edit_tensors(bad, lambda t: t.update({key: torch.randn(4, 64), key[:-1] + "B": torch.randn(32, 4)}))
    assert_refused(merge_with(good, bad, out), out, bad / WEIGHTS, "embedding LoRA", "embed_tokens")


def test_lora_bias_in_weights(good, tmp_path):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    key = f"{Q_PROJ}.lora_B.bias"
    edit_tensors(bad, lambda t: t.update({key: torch.randn(32)}))
    assert_refused(merge_with(good, bad, out), out, bad / WEIGHTS, "LoRA biases", key)


def test_lora_bias_in_config(good, tmp_path):
    bad, out = edit_config(copy_of(good, tmp_path), lora_bias=True), tmp_path / "out"
    assert_refused(merge_with(good, bad, out), out, bad / CONFIG, "LoRA biases (lora_bias: true)")


def test_trained_base_biases_in_config(good, tmp_path):
    bad, out = edit_config(copy_of(good, tmp_path), bias="lora_only"), tmp_path / "out"
    assert_refused(merge_with(good, bad, out), out, bad / CONFIG, "trained biases", "lora_only")


@pytest.mark.parametrize(
    "value, word, other_word",
    [(float("nan"), "NaN", "Inf"), (float("inf"), "Inf", "NaN"), (float("-inf"), "Inf", "NaN")],
)
def test_non_finite_weights(good, tmp_path, value, word, other_word):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"

    def poison(t):
        t[f"{Q_PROJ}.lora_B.weight"][3, 1] = value

    edit_tensors(bad, poison)
    result = merge_with(good, bad, out)
    assert_refused(result, out, bad / WEIGHTS, "model.layers.0.self_attn.q_proj lora_B", word)
    assert other_word not in result.stderr  # says which of the two it found


# --- adapters that do not fit together -----------------------------------------------------------


def test_different_bases(good, tmp_path):
    bad, out = edit_config(copy_of(good, tmp_path), base_model_name_or_path="org/another-model"), tmp_path / "out"
    assert_refused(merge_with(good, bad, out), out, "different bases", good, bad, "org/another-model")


def test_no_base_recorded(good, tmp_path):
    bad, out = edit_config(copy_of(good, tmp_path), base_model_name_or_path=None), tmp_path / "out"
    assert_refused(merge_with(good, bad, out), out, bad / CONFIG, "records no base model")


def test_module_shapes_disagree(good, wide_adapter, tmp_path):
    out = tmp_path / "out"
    result = merge_with(good, wide_adapter, out)
    assert_refused(result, out, "module model.layers.0", "has shape", good, wide_adapter, "different models")


def test_rank_mismatch_inside_module(good, tmp_path):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"

    def cut(t):
        t[f"{Q_PROJ}.lora_A.weight"] = t[f"{Q_PROJ}.lora_A.weight"][:3].clone()

    edit_tensors(bad, cut)
    assert_refused(
        merge_with(good, bad, out),
        out,
        bad / WEIGHTS,
        "model.layers.0.self_attn.q_proj",
        "shapes disagree",
        "lora_A (3, 32)",
        "lora_B (32, 4)",
    )


def test_missing_half_of_a_module(good, tmp_path):
    bad, out = copy_of(good, tmp_path), tmp_path / "out"
    edit_tensors(bad, lambda t: t.pop(f"{Q_PROJ}.lora_B.weight"))
    assert_refused(merge_with(good, bad, out), out, bad / WEIGHTS, "model.layers.0.self_attn.q_proj has no lora_B")


# --- options -------------------------------------------------------------------------------------


def test_weights_wrong_length(good, other, tmp_path):
    out = tmp_path / "out"
    result = merge_with(good, other, out, "--weights", "1,0.5,2")
    assert_refused(result, out, "--weights", "3 values for 2 adapters")


def test_weights_not_numbers(good, other, tmp_path):
    out = tmp_path / "out"
    result = merge_with(good, other, out, "--weights", "1,half")
    assert_refused(result, out, "--weights must be numbers", "'1,half'")


@pytest.mark.parametrize("density", ["0", "1.5"])
def test_density_out_of_range(good, other, tmp_path, density):
    out = tmp_path / "out"
    result = invoke("merge", good, other, "-m", "ties", "--density", density, "-o", out)
    assert_refused(result, out, "--density must be in (0, 1]", f"got {float(density)}")


def test_density_not_accepted_by_linear(good, other, tmp_path):
    out = tmp_path / "out"
    result = merge_with(good, other, out, "--density", "0.5")
    assert_refused(result, out, "linear takes no --density")


def test_unknown_method(good, other, tmp_path):
    out = tmp_path / "out"
    result = invoke("merge", good, other, "-m", "average", "-o", out)
    assert_refused(result, out, "'average' is not one of", "'linear'", "'ties'")


# --- the output folder ---------------------------------------------------------------------------


def make_existing(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    return out


def test_existing_out_without_force(good, other, tmp_path):
    out = make_existing(tmp_path)
    result = merge_with(good, other, out)
    assert result.exit_code == 2, result.stderr
    assert says(result, out, "already exists", "pass --force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert dot_entries(tmp_path) == []


def test_existing_out_with_force_is_replaced(good, other, tmp_path):
    from loramix.core.adapters import read_adapter

    out = make_existing(tmp_path)
    result = merge_with(good, other, out, "--force")
    assert result.exit_code == 0, result.stderr
    assert not (out / "keep.txt").exists()
    assert (out / WEIGHTS).is_file() and (out / CONFIG).is_file()
    assert len(read_adapter(out).modules) == 14
    assert dot_entries(tmp_path) == []


@pytest.mark.parametrize("force", [False, True])
def test_out_is_an_input(good, tmp_path, force):
    a = copy_of(good, tmp_path, "a")
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    result = invoke("merge", good, a, "-m", "linear", "-o", a, *(["--force"] if force else []))
    assert result.exit_code == 2, result.stderr
    assert says(result, a, "is also an input")
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before
    assert dot_entries(tmp_path) == []


def test_out_holding_an_input_is_not_replaced(good, tmp_path):
    """`-o runs --force` where an input lives in runs/ would delete that input."""
    runs = tmp_path / "runs"
    runs.mkdir()
    a = copy_of(good, runs, "a")
    result = invoke("merge", good, a, "-m", "linear", "-o", runs, "--force")
    assert result.exit_code == 2, result.stderr
    assert says(result, runs, a, "would delete that input")
    assert (a / WEIGHTS).is_file() and (a / CONFIG).is_file()
    assert dot_entries(tmp_path) == [] and dot_entries(runs) == []


def test_out_below_a_file(good, other, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("not a folder")
    out = file / "merged"
    result = merge_with(good, other, out)
    assert result.exit_code == 2, result.stderr
    assert says(result, out, "cannot be created", f"{file} is a file")
    assert file.read_text() == "not a folder" and dot_entries(tmp_path) == []


def test_out_is_a_file(good, other, tmp_path):
    out = tmp_path / "merged"
    out.write_text("not a folder")
    result = merge_with(good, other, out, "--force")
    assert result.exit_code == 2, result.stderr
    assert says(result, out, "exists and is a file")
    assert out.read_text() == "not a folder" and dot_entries(tmp_path) == []


# --- failures during the write leave nothing behind ---------------------------------------------


@pytest.mark.parametrize("failure, code", [(RuntimeError("disk on fire"), 1), (KeyboardInterrupt(), 130)])
def test_failure_while_writing_leaves_nothing(good, other, tmp_path, monkeypatch, failure, code):
    import loramix.merge.job

    def half_write(folder, config, factors, *rest):
        (folder / WEIGHTS).write_bytes(b"half an adapter")
        raise failure

    monkeypatch.setattr(loramix.merge.job, "write_adapter", half_write)
    out = tmp_path / "new" / "deeper" / "merged"
    result = merge_with(good, other, out)
    assert result.exit_code == code, result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "new").exists()  # not the output, nor the folders made for it
    assert dot_entries(tmp_path) == []


def test_failure_while_replacing_keeps_the_old_out(good, other, tmp_path, monkeypatch):
    import loramix.merge.job

    monkeypatch.setattr(loramix.merge.job, "write_adapter", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    out = make_existing(tmp_path)
    result = merge_with(good, other, out, "--force")
    assert result.exit_code == 1, result.stderr
    assert says(result, "boom")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert dot_entries(tmp_path) == []


# --- success, version and help -------------------------------------------------------------------


def test_linear_merge_json(good, other, tmp_path):
    from loramix.core.adapters import read_adapter

    out = tmp_path / "merged"
    result = invoke("merge", good, other, "-m", "linear", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["method"] == "linear" and report["exact"] is True
    assert report["rank"] == {"min": 10, "max": 10}  # 4 + 6, exact concatenation
    assert report["error"]["max"] == 0 and report["error"]["mean"] == 0
    assert report["weights"] == [1.0, 1.0]
    assert Path(report["out"]) == out
    assert dot_entries(tmp_path) == []
    # the output folder gets the ordinary permissions of a new folder, not a private temp folder's
    (tmp_path / "plain").mkdir()
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode

    merged, a, b = read_adapter(out), read_adapter(good), read_adapter(other)
    assert merged.base == a.base
    for name, m in merged.modules.items():
        assert m.rank == 10 and m.scale == 1.0
        torch.testing.assert_close(m.delta(), a.modules[name].delta() + b.modules[name].delta(), msg=name)


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"loramix {__version__}"


def test_help_shows_an_example():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and "loramix merge" in result.stdout
    for command in ("merge", "inspect"):
        assert command in result.stdout


def test_merge_help_shows_an_example():
    result = invoke("merge", "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and "--density" in result.stdout
