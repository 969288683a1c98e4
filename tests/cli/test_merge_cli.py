"""`loramix merge` and the root app through the CLI: output, JSON, methods list, entry points."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from loramix import __version__
from loramix.cli.app import app
from loramix.merge.methods import REGISTRY

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"NO_COLOR": "1", "COLUMNS": "100"})


def test_merge_prints_a_summary_and_writes_provenance(adapter_pair, tmp_path):
    out = tmp_path / "m"
    result = invoke("merge", *adapter_pair, "-m", "ties", "--density", "0.4", "-o", out)
    assert result.exit_code == 0, result.output
    for text in ("ties", "density", "0.4", "rel. error", "rank", "10", str(out)):
        assert text in result.stdout
    prov = json.loads((out / "loramix_merge.json").read_text())
    assert prov["method"] == "ties" and prov["density"] == 0.4 and len(prov["adapters"]) == 2
    assert all(len(a["sha256"]) == 64 for a in prov["adapters"])


def test_merge_json_report(adapter_pair, tmp_path):
    result = invoke("merge", *adapter_pair, "-m", "svd", "-r", "3", "-o", tmp_path / "m", "--json")
    doc = json.loads(result.stdout)
    assert doc["method"] == "svd" and doc["rank"] == {"min": 3, "max": 3} and doc["modules"] == 14
    assert 0 < doc["error"]["max"] < 1 and doc["exact"] is False and doc["kind"] == "truncated"
    expected = {
        f"model.layers.{i}.{m}"
        for i in (0, 1)
        for m in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    }
    assert set(doc["errors"]) == expected
    assert max(doc["errors"].values()) == doc["error"]["max"]


def test_portable_profile_has_uniform_rank(adapter_pair, tmp_path, base_dir):
    from tests.helpers import make_adapter

    partial = make_adapter(base_dir, tmp_path / "p", r=2, alpha=2, targets=["q_proj"], seed=9)
    out = tmp_path / "m"
    result = invoke("merge", adapter_pair[0], partial, "-m", "linear", "--profile", "portable", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 6 and cfg["lora_alpha"] == 6 and cfg["rank_pattern"] == {} and cfg["alpha_pattern"] == {}
    assert cfg["use_rslora"] is False and cfg["use_dora"] is False and not cfg["modules_to_save"]


def test_list_methods_shows_the_registry():
    result = invoke("merge", "--list-methods")
    assert result.exit_code == 0
    for name in REGISTRY:
        assert name in result.stdout
    doc = json.loads(invoke("merge", "--list-methods", "--json").stdout)
    assert [m["name"] for m in doc["methods"]] == list(REGISTRY)
    assert all(m["paper"].startswith("https://") for m in doc["methods"])


def test_module_entry_point_and_version():
    proc = subprocess.run([sys.executable, "-m", "loramix", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"loramix {__version__}"


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys\n"
        "from loramix.cli.app import app\n"
        "for args in (['--help'], ['merge', '--help'], ['inspect', '--help'], ['train-skill', '--help'], ['fit-cat', '--help'], "
        "['data', '--help'], ['eval', '--help'], ['demo', '--help'], ['data'], ['--version']):\n"
        "    try:\n"
        "        app(args, prog_name='loramix')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout and "--list-methods" in proc.stdout


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_ctrl_c_exits_130_and_writes_nothing(adapter_pair, tmp_path, monkeypatch):
    from loramix.merge import engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "factor_module", interrupted)
    result = invoke("merge", *adapter_pair, "-m", "ties", "-o", tmp_path / "m")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []


def test_unexpected_failure_exits_1_with_traceback_only_under_debug(adapter_pair, tmp_path, monkeypatch):
    from loramix.merge import engine

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "factor_module", broken)
    plain = invoke("merge", *adapter_pair, "-m", "ties", "-o", tmp_path / "m")
    assert plain.exit_code == 1 and "boom" in plain.stderr and "Traceback" not in plain.stderr
    debug = invoke("--debug", "merge", *adapter_pair, "-m", "ties", "-o", tmp_path / "m")
    assert debug.exit_code == 1 and "Traceback" in debug.stderr
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []


def test_non_finite_weights_are_refused(adapter_pair, tmp_path):
    for text in ("1,nan", "inf,1"):
        result = invoke("merge", *adapter_pair, "-m", "linear", "--weights", text, "-o", tmp_path / "m")
        assert result.exit_code == 2 and "finite" in result.stderr and not (tmp_path / "m").exists()


def test_unwritable_output_is_a_clear_runtime_error(adapter_pair, tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")  # as safetensors raises it: no file named

    monkeypatch.setattr("loramix.merge.job.write_adapter", no_space)
    result = invoke("merge", *adapter_pair, "-m", "linear", "-o", tmp_path / "m")
    assert result.exit_code == 1 and "unexpected" not in result.stderr
    assert f"{tmp_path / 'm'}: no space left on the device while writing it" in " ".join(result.stderr.split())
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []


def test_unquoted_weights_get_a_hint(adapter_pair, tmp_path):
    result = invoke("merge", *adapter_pair, "-m", "linear", "--weights", "1", "0.5", "-o", tmp_path / "m")
    assert result.exit_code == 2 and "--weights has 1 value for 3 adapters" in result.stderr
    assert "comma-separated, e.g. --weights 1,0.5" in result.stderr


def test_one_adapter_or_the_same_twice_is_merged_with_a_warning(adapter_pair, tmp_path):
    import shutil

    a, _ = adapter_pair
    alone = invoke("merge", a, "-m", "ties", "-o", tmp_path / "one", "--json")
    assert alone.exit_code == 0 and "one adapter given" in alone.stderr
    assert json.loads(alone.stdout)["warnings"][0].startswith("one adapter given")
    twin = shutil.copytree(a, tmp_path / "twin")
    twice = invoke("merge", a, twin, "-m", "linear", "-o", tmp_path / "two")
    assert twice.exit_code == 0 and "hold the same weights: that adapter counts twice" in twice.stderr


def test_a_misspelt_method_gets_the_nearest_one_and_any_case_works(adapter_pair, tmp_path):
    wrong = invoke("merge", *adapter_pair, "-m", "tie", "-o", tmp_path / "m")
    assert wrong.exit_code == 2 and "Did you mean 'ties'?" in " ".join(wrong.stderr.replace("│", " ").split())
    upper = invoke("merge", *adapter_pair, "-m", "TIES", "-o", tmp_path / "m", "--json")
    assert upper.exit_code == 0 and json.loads(upper.stdout)["method"] == "ties"
