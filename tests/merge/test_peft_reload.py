"""Every method's output, written to disk and reloaded by plain PEFT, gives W0 + the intended ΔW."""

from __future__ import annotations

import json

import pytest
import torch

from loramix.core.adapters import read_adapter
from loramix.merge.engine import MergeOptions, merge_module
from loramix.merge.job import MergeRequest, run_merge
from loramix.merge.methods import REGISTRY
from loramix.merge.report import MergeReport
from tests.helpers import delta_logits, logits, make_adapter, peft_logits
from tests.merge import reference

WEIGHTS = [0.7, -0.4]


@pytest.fixture(scope="module")
def third(base_dir, tmp_path_factory):
    """Heterogeneous: per-module ranks and alphas, and only some modules targeted."""
    return make_adapter(
        base_dir,
        tmp_path_factory.mktemp("third") / "c",
        r=3,
        alpha=5,
        seed=3,
        targets=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"v_proj": 5},
        alpha_pattern={"down_proj": 2},
    )


def run(adapters, method, out, **kw) -> MergeReport:
    return run_merge(MergeRequest(adapters=list(adapters), method=method, out=out, **kw))


@pytest.mark.parametrize("method", ["linear", "cat"])
def test_exact_methods_reload_as_the_weighted_sum(method, base_dir, adapter_pair, third, tmp_path):
    paths = [*adapter_pair, third]
    weights = [0.7, -0.4, 1.3]
    report = run(paths, method, tmp_path / "out", weights=weights)
    assert report.error_max == 0.0 and report.exact
    adapters = [read_adapter(p) for p in paths]
    want = {}
    for a, w in zip(adapters, weights):
        for n, m in a.modules.items():
            want[n] = want.get(n, 0) + w * m.delta()
    expected = delta_logits(base_dir, want)
    assert torch.allclose(peft_logits(base_dir, tmp_path / "out"), expected, atol=1e-5)
    assert not torch.allclose(expected, delta_logits(base_dir, {}), atol=1e-3)  # the merge did something


@pytest.mark.parametrize("method", sorted(REGISTRY))
@pytest.mark.parametrize("profile", ["peft", "portable"])
def test_every_method_reloads_in_peft(method, profile, base_dir, adapter_pair, tmp_path):
    """At a rank that cannot truncate (>= the module's smaller side) the adapter holds the full
    merged delta, so PEFT's logits must equal W0 + that delta."""
    opts = MergeOptions(weights=WEIGHTS, density=0.5 if "density" in REGISTRY[method].options else None, seed=1)
    run(adapter_pair, method, tmp_path / "out", weights=WEIGHTS, density=opts.density, rank=64, profile=profile, seed=1)
    adapters = [read_adapter(p) for p in adapter_pair]
    want = {n: merge_module(REGISTRY[method], adapters, opts, n).delta() for n in adapters[0].modules}
    assert torch.allclose(peft_logits(base_dir, tmp_path / "out"), delta_logits(base_dir, want), atol=1e-5)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    if profile == "portable":
        assert config["lora_alpha"] == config["r"] and not config["rank_pattern"] and not config["use_rslora"]


def test_ties_reloads_as_the_reference_ties(base_dir, adapter_pair, tmp_path):
    run(adapter_pair, "ties", tmp_path / "out", weights=WEIGHTS, density=0.3, rank=64)
    adapters = [read_adapter(p) for p in adapter_pair]
    want = {n: reference.ties([a.modules[n].delta() for a in adapters], WEIGHTS, 0.3) for n in adapters[0].modules}
    assert torch.allclose(peft_logits(base_dir, tmp_path / "out"), delta_logits(base_dir, want), atol=1e-5)


def test_truncated_adapter_reloads_as_its_factors(base_dir, adapter_pair, tmp_path):
    report = run(adapter_pair, "ties", tmp_path / "out", weights=WEIGHTS, rank=3)
    assert 0.0 < report.error_max < 1.0 and not report.exact
    merged = read_adapter(tmp_path / "out")
    assert {m.rank for m in merged.modules.values()} == {3}
    want = {n: m.delta() for n, m in merged.modules.items()}
    assert torch.allclose(peft_logits(base_dir, tmp_path / "out"), delta_logits(base_dir, want), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_adapters_stay_half(dtype, base_dir, tmp_path):
    a = make_adapter(base_dir, tmp_path / "a", seed=5, dtype=dtype)
    b = make_adapter(base_dir, tmp_path / "b", seed=6, dtype=dtype)
    run([a, b], "linear", tmp_path / "out")
    assert read_adapter(tmp_path / "out").dtype == dtype


def test_into_base_writes_a_full_model(base_dir, adapter_pair, tmp_path, monkeypatch):
    import shutil

    from transformers import AutoModelForCausalLM

    from loramix.merge import into_base

    monkeypatch.setattr(into_base, "MAX_SHARD_BYTES", 20_000)  # force several shards
    base = shutil.copytree(base_dir, tmp_path / "base")
    (base / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    out = tmp_path / "full"
    run(adapter_pair, "linear", out, weights=WEIGHTS, into_base=str(base))
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    assert (out / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'
    assert (out / "config.json").is_file()
    adapters = [read_adapter(p) for p in adapter_pair]
    want = {n: sum(w * a.modules[n].delta() for a, w in zip(adapters, WEIGHTS)) for n in adapters[0].modules}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.allclose(logits(model.eval()), delta_logits(base_dir, want), atol=1e-5)
