"""Adapter I/O at unit level: what `read_adapter` makes of adapters PEFT wrote, and what
`write_adapter` + `lora_config` write back (docs/architecture.md, Adapters on disk)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from loramix.core.adapters import Adapter, LoraModule, pattern_value, read_adapter
from loramix.core.compat import check_compatible
from loramix.core.errors import AdapterError
from loramix.core.profiles import lora_config, write_adapter
from tests.helpers import TARGETS, make_adapter

LAYERS = 2
# (out, in) of each target in the tiny Llama: hidden 32, 4 heads of 8, 2 kv heads, mlp 48
SHAPES = {
    "q_proj": (32, 32),
    "k_proj": (16, 32),
    "v_proj": (16, 32),
    "o_proj": (32, 32),
    "gate_proj": (48, 32),
    "up_proj": (48, 32),
    "down_proj": (32, 48),
}
PATTERNS = dict(
    rank_pattern={"q_proj": 2, "layers.1.mlp.down_proj": 6},
    alpha_pattern={"v_proj": 3, r"layers\.0\.self_attn\.o_proj": 5},
)


def module_path(layer: int, target: str) -> str:
    block = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"model.layers.{layer}.{block}.{target}"


ALL_MODULES = sorted(module_path(i, t) for i in range(LAYERS) for t in TARGETS)


@pytest.fixture(scope="module")
def adapters(base_dir, tmp_path_factory):
    """PEFT-written adapters, built once for this module."""
    root = tmp_path_factory.mktemp("unit_adapters")
    return {
        "plain": make_adapter(base_dir, root / "plain", r=4, alpha=8, seed=11),
        "rslora": make_adapter(base_dir, root / "rslora", r=9, alpha=6, seed=12, use_rslora=True),
        "patterns": make_adapter(base_dir, root / "patterns", r=4, alpha=8, seed=13, **PATTERNS),
        "patterns_rslora": make_adapter(
            base_dir, root / "patterns_rslora", r=4, alpha=8, seed=14, use_rslora=True, **PATTERNS
        ),
        "fp16": make_adapter(base_dir, root / "fp16", r=4, alpha=8, seed=15, dtype=torch.float16),
        "bf16": make_adapter(base_dir, root / "bf16", r=4, alpha=8, seed=16, dtype=torch.bfloat16),
    }


def peft_deltas(base_dir, adapter_dir) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, int]]:
    """ΔW, scaling and rank of every LoRA layer as PEFT itself computes them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    deltas, scales, ranks = {}, {}, {}
    for name, mod in model.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            key = name.removeprefix("base_model.model.")
            deltas[key] = mod.get_delta_weight("default").float()
            scales[key] = mod.scaling["default"]
            ranks[key] = mod.r["default"]
    return deltas, scales, ranks


def assert_matches_peft(adapter: Adapter, base_dir, adapter_dir) -> None:
    deltas, scales, ranks = peft_deltas(base_dir, adapter_dir)
    assert sorted(deltas) == sorted(adapter.modules)
    for name, m in adapter.modules.items():
        assert m.rank == ranks[name], name
        assert m.scale == pytest.approx(scales[name], rel=1e-12), name
        torch.testing.assert_close(m.delta(), deltas[name], rtol=1e-5, atol=1e-6, msg=name)


# --- reading -------------------------------------------------------------------------------------


def test_plain_adapter_shapes_and_scale(adapters, base_dir):
    a = read_adapter(adapters["plain"])
    assert sorted(a.modules) == ALL_MODULES
    for name, m in a.modules.items():
        out, inp = SHAPES[name.rsplit(".", 1)[-1]]
        assert tuple(m.A.shape) == (4, inp), name
        assert tuple(m.B.shape) == (out, 4), name
        assert m.shape == (out, inp)
        assert m.scale == 8 / 4
    assert a.base == str(base_dir)
    assert a.dtype == torch.float32
    assert a.num_parameters == sum(4 * (o + i) for o, i in SHAPES.values()) * LAYERS
    assert_matches_peft(a, base_dir, adapters["plain"])


def test_delta_is_scale_b_a_and_row_slices(adapters):
    m = read_adapter(adapters["plain"]).modules["model.layers.0.mlp.gate_proj"]
    full = m.delta()
    torch.testing.assert_close(full, 2.0 * m.B @ m.A)
    torch.testing.assert_close(m.delta(5, 17), full[5:17])
    assert full.abs().max() > 0  # a trained-looking adapter, not PEFT's zero init


def test_rslora_scale_is_alpha_over_sqrt_r(adapters, base_dir):
    a = read_adapter(adapters["rslora"])
    for m in a.modules.values():
        assert m.rank == 9
        assert m.scale == pytest.approx(6 / math.sqrt(9))  # 2.0, not alpha/r = 0.667
    assert_matches_peft(a, base_dir, adapters["rslora"])


@pytest.mark.parametrize("kind", ["patterns", "patterns_rslora"])
def test_rank_and_alpha_patterns(adapters, base_dir, kind):
    a = read_adapter(adapters[kind])
    scale = (lambda alpha, r: alpha / math.sqrt(r)) if kind.endswith("rslora") else (lambda alpha, r: alpha / r)
    expected = {  # module -> (rank, alpha)
        "model.layers.0.self_attn.q_proj": (2, 8),  # rank_pattern "q_proj"
        "model.layers.1.self_attn.q_proj": (2, 8),
        "model.layers.1.mlp.down_proj": (6, 8),  # rank_pattern on one layer only
        "model.layers.0.mlp.down_proj": (4, 8),  # ... not this one
        "model.layers.0.self_attn.v_proj": (4, 3),  # alpha_pattern "v_proj"
        "model.layers.0.self_attn.o_proj": (4, 5),  # alpha_pattern on one layer only
        "model.layers.1.self_attn.o_proj": (4, 8),  # ... not this one
        "model.layers.0.self_attn.k_proj": (4, 8),  # matched by nothing
        "model.layers.1.mlp.up_proj": (4, 8),
    }
    for name, (r, alpha) in expected.items():
        m = a.modules[name]
        assert m.rank == r, name
        assert m.A.shape[0] == m.B.shape[1] == r
        assert m.scale == pytest.approx(scale(alpha, r)), name
    assert_matches_peft(a, base_dir, adapters[kind])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_adapters_keep_their_dtype(adapters, dtype):
    a = read_adapter(adapters["fp16" if dtype == torch.float16 else "bf16"])
    assert a.dtype == dtype
    for m in a.modules.values():
        assert m.A.dtype == m.B.dtype == dtype
        assert m.delta().dtype == torch.float32  # computed in float32


def test_pattern_value_matches_whole_name_components():
    patterns = {"q_proj": 2, r"layers\.1\.mlp\.up_proj": 3}
    assert pattern_value(patterns, "model.layers.0.self_attn.q_proj", 8) == 2
    assert pattern_value(patterns, "model.layers.1.mlp.up_proj", 8) == 3
    assert pattern_value(patterns, "model.layers.11.mlp.up_proj", 8) == 8  # not layer 1
    assert pattern_value(patterns, "model.layers.0.self_attn.xq_proj", 8) == 8  # not a suffix match
    assert pattern_value({}, "model.layers.0.self_attn.q_proj", 8) == 8
    assert pattern_value(None, "model.layers.0.self_attn.q_proj", 8) == 8


def test_read_adapter_refuses_config_rank_disagreeing_with_weights(adapters, tmp_path):
    bad = shutil.copytree(adapters["plain"], tmp_path / "bad")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["rank_pattern"] = {"k_proj": 3}
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match=r"k_proj has rank 4 but adapter_config\.json says r=3"):
        read_adapter(bad)


# --- writing -------------------------------------------------------------------------------------


def hetero_factors(dtype=torch.float32, seed=0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Factors with ranks that differ per module (the most common rank is 3)."""
    g = torch.Generator().manual_seed(seed)
    ranks = {"q_proj": 5, "k_proj": 3, "v_proj": 3, "o_proj": 3, "gate_proj": 1, "up_proj": 3, "down_proj": 7}
    factors = {}
    for _i, name in enumerate(ALL_MODULES):
        target = name.rsplit(".", 1)[-1]
        out, inp = SHAPES[target]
        r = ranks[target] + (1 if name == "model.layers.1.mlp.down_proj" else 0)  # one layer differs
        A = torch.randn(r, inp, generator=g).to(dtype)
        B = torch.randn(out, r, generator=g).to(dtype)
        factors[name] = (A, B)
    return factors


def test_lora_config_bakes_scale_one(adapters):
    template = read_adapter(adapters["patterns_rslora"]).config
    template["loramix_internal"] = 1
    factors = hetero_factors()
    ranks = {n: A.shape[0] for n, (A, _) in factors.items()}
    cfg = lora_config(template, ranks=ranks, base="some/base")
    assert cfg["r"] == cfg["lora_alpha"] == 3
    assert cfg["use_rslora"] is False and cfg["use_dora"] is False
    assert cfg["base_model_name_or_path"] == "some/base"
    assert cfg["rank_pattern"] == cfg["alpha_pattern"]
    assert "loramix_internal" not in cfg
    assert sorted(cfg["target_modules"]) == sorted(TARGETS)
    for name, r in ranks.items():  # every module gets alpha == r
        assert pattern_value(cfg["rank_pattern"], name, cfg["r"]) == r, name
        assert pattern_value(cfg["alpha_pattern"], name, cfg["lora_alpha"]) == r, name


def test_target_modules_are_full_names_when_kinds_cover_different_layers(base_dir, tmp_path):
    from peft import PeftModel

    from tests.helpers import peft_logits

    names = [f"model.layers.{i}.self_attn.{k}" for i in (0, 1) for k in ("q_proj", "v_proj")]
    assert lora_config({}, ranks=dict.fromkeys(names, 2), base="b")["target_modules"] == ["q_proj", "v_proj"]
    partial = names[:2] + ["model.layers.1.self_attn.q_proj"]  # v_proj in layer 0 only
    cfg = lora_config({}, ranks=dict.fromkeys(partial, 2), base=str(base_dir))
    assert cfg["target_modules"] == sorted(partial)
    factors = {n: (torch.randn(2, 32), torch.randn(32 if "q_proj" in n else 16, 2)) for n in partial}
    (tmp_path / "p").mkdir()
    write_adapter(tmp_path / "p", cfg, factors)
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "p")
    wrapped = {n.removeprefix("base_model.model.") for n, m in loaded.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(partial)
    assert torch.isfinite(peft_logits(base_dir, tmp_path / "p")).all()


def test_lora_config_uniform_ranks_have_no_patterns():
    cfg = lora_config({}, ranks=dict.fromkeys(ALL_MODULES, 4), base="b")
    assert cfg["r"] == cfg["lora_alpha"] == 4
    assert cfg["rank_pattern"] == {} and cfg["alpha_pattern"] == {}


def test_lora_config_patterns_match_only_their_own_module():
    """A module whose name ends with another module's full name must not take its rank."""
    from peft.utils.other import get_pattern_key

    ranks = {"model.layers.0.self_attn.q_proj": 2, "vision.model.layers.0.self_attn.q_proj": 5, "x.k_proj": 4}
    ranks.update({f"model.layers.1.{t}": 4 for t in ("a", "b", "c")})
    cfg = lora_config({}, ranks=ranks, base="b")
    # PEFT reads the patterns back in file order, which write_adapter sorts
    patterns = json.loads(json.dumps(cfg, sort_keys=True))["rank_pattern"]
    for name, r in ranks.items():
        assert pattern_value(patterns, name, cfg["r"]) == r, name
        assert patterns.get(get_pattern_key(patterns.keys(), name), cfg["r"]) == r, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_write_adapter_round_trip(adapters, base_dir, tmp_path, dtype):
    template = read_adapter(adapters["rslora"]).config  # rsLoRA in the template must not leak out
    factors = hetero_factors(dtype)
    ranks = {n: A.shape[0] for n, (A, _) in factors.items()}
    out = tmp_path / "written"
    out.mkdir()
    write_adapter(out, lora_config(template, ranks=ranks, base=str(base_dir)), factors)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    back = read_adapter(out)
    assert back.base == str(base_dir)
    assert sorted(back.modules) == sorted(factors)
    for name, (A, B) in factors.items():
        m = back.modules[name]
        assert m.scale == 1.0, name  # exactly: alpha == r for every module
        assert m.A.dtype == m.B.dtype == dtype
        assert torch.equal(m.A, A) and torch.equal(m.B, B), name

    deltas, scales, peft_ranks = peft_deltas(base_dir, out)
    assert sorted(deltas) == sorted(factors)
    for name, (A, B) in factors.items():
        assert scales[name] == 1.0, name
        assert peft_ranks[name] == A.shape[0], name
        torch.testing.assert_close(
            deltas[name],
            (B.float() @ A.float()),
            rtol=1e-2 if dtype != torch.float32 else 1e-5,
            atol=1e-2 if dtype != torch.float32 else 1e-5,
            msg=name,
        )


def test_write_adapter_round_trips_a_peft_adapter(adapters, base_dir, tmp_path):
    """A PEFT adapter with patterns and rsLoRA, rewritten with its scales baked into B, is unchanged."""
    src = read_adapter(adapters["patterns_rslora"])
    factors = {n: (m.A, m.scale * m.B) for n, m in src.modules.items()}
    out = tmp_path / "rewritten"
    out.mkdir()
    write_adapter(
        out, lora_config(src.config, ranks={n: m.rank for n, m in src.modules.items()}, base=src.base), factors
    )
    back = read_adapter(out)
    for name, m in src.modules.items():
        assert back.modules[name].scale == 1.0
        torch.testing.assert_close(back.modules[name].delta(), m.delta(), msg=name)
    assert_matches_peft(back, base_dir, out)


# --- compatibility -------------------------------------------------------------------------------


def fake(path: str, base: str, shapes: dict[str, tuple[int, int]], **config) -> Adapter:
    from pathlib import Path

    modules = {n: LoraModule(A=torch.zeros(2, i), B=torch.zeros(o, 2), scale=1.0) for n, (o, i) in shapes.items()}
    return Adapter(path=Path(path), config={"base_model_name_or_path": base, **config}, modules=modules)


def test_check_compatible_accepts_same_base_and_shapes(adapters):
    a, b = read_adapter(adapters["plain"]), read_adapter(adapters["patterns"])
    check_compatible([a, b])  # different ranks and scales are fine
    check_compatible([fake("x", "org/m", {"q": (4, 4)}), fake("y", "org/m/", {"q": (4, 4), "k": (2, 4)})])


def test_check_compatible_refuses_different_bases():
    x, y = fake("/ad/x", "org/base-a", {"q": (4, 4)}), fake("/ad/y", "org/base-b", {"q": (4, 4)})
    with pytest.raises(AdapterError) as e:
        check_compatible([x, y])
    assert "different bases" in e.value.message
    for part in ("/ad/x", "/ad/y", "org/base-a", "org/base-b"):
        assert part in e.value.message


def test_check_compatible_refuses_shape_mismatch():
    x, y = fake("/ad/x", "b", {"q": (4, 4), "k": (2, 4)}), fake("/ad/y", "b", {"k": (3, 4)})
    with pytest.raises(AdapterError) as e:
        check_compatible([x, y])
    assert "module k" in e.value.message and "(2, 4)" in e.value.message and "(3, 4)" in e.value.message
    assert "/ad/x" in e.value.message and "/ad/y" in e.value.message
    assert e.value.exit_code == 2


def test_check_compatible_accepts_adapters_trained_on_differently_loaded_bases():
    """fan_in_fan_out records how the base stored a weight while training (a 4-bit GPT-2 has Linear
    layers, a full one Conv1D); A and B mean the same either way."""
    x = fake("/ad/x", "b", {"q": (4, 4)})
    y = fake("/ad/y", "b", {"q": (4, 4)}, fan_in_fan_out=True)
    check_compatible([x, y])


# --- config refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, needles",
    [
        ({"alora_invocation_tokens": [5, 6]}, ["activated LoRA", "alora_invocation_tokens"]),
        ({"use_qalora": True}, ["QA-LoRA", "use_qalora"]),
        ({"trainable_token_indices": [1, 2]}, ["trainable token embeddings", "trainable_token_indices"]),
        ({"init_lora_weights": "pissa_niter_4"}, ["changed the base weights", "'pissa_niter_4'"]),
        ({"init_lora_weights": "olora"}, ["changed the base weights", "'olora'"]),
        ({"init_lora_weights": "loftq"}, ["changed the base weights", "'loftq'"]),
        (
            {"use_qalora": True, "trainable_token_indices": [1]},
            ["QA-LoRA (it acts on pooled inputs) (use_qalora: true); ", "trainable_token_indices: [1]"],
        ),
        ({"peft_type": "IA3"}, ["peft_type is IA3", "LoRA adapters only"]),
        ({"r": "four"}, ["r must be a positive whole number, got 'four'"]),
        ({"r": 0}, ["r must be a positive whole number, got 0"]),
        ({"lora_alpha": None}, ["lora_alpha must be a number, got None"]),
        ({"lora_alpha": "16"}, ["lora_alpha must be a number, got '16'"]),
        ({"alpha_pattern": {"q_proj": "x"}}, ["alpha_pattern gives 'q_proj' the value 'x'"]),
        ({"rank_pattern": {"q_proj": 2.5}}, ["rank_pattern gives 'q_proj' the value 2.5"]),
        ({"rank_pattern": {"q_proj(": 4}}, ["rank_pattern key 'q_proj(' is not a valid regular expression"]),
        ({"rank_pattern": [4]}, ["rank_pattern must map module patterns to numbers"]),
    ],
    ids=lambda x: "-".join(x) if isinstance(x, dict) else None,
)
def test_read_adapter_refuses_config(adapters, tmp_path, changes, needles):
    bad = shutil.copytree(adapters["plain"], tmp_path / "bad")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg.update(changes)
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError) as e:
        read_adapter(bad)
    assert e.value.message.startswith(str(bad / "adapter_config.json") + ": ")
    for needle in needles:
        assert needle in e.value.message
    assert e.value.exit_code == 2


def test_base_changing_init_hint_says_how_to_convert(adapters, tmp_path):
    bad = shutil.copytree(adapters["plain"], tmp_path / "bad")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "init_lora_weights": "corda"}))
    with pytest.raises(AdapterError) as e:
        read_adapter(bad)
    assert "path_initial_model_for_weight_conversion" in e.value.hint


@pytest.mark.parametrize("init", [True, False, "gaussian", "eva", "orthogonal", "mica"])
def test_read_adapter_accepts_inits_that_leave_the_base_alone(adapters, tmp_path, init):
    ok = shutil.copytree(adapters["plain"], tmp_path / "ok")
    cfg = json.loads((ok / "adapter_config.json").read_text())
    (ok / "adapter_config.json").write_text(json.dumps({**cfg, "init_lora_weights": init}))
    assert len(read_adapter(ok).modules) == len(ALL_MODULES)
