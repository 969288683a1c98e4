"""The CAT layer (loramix/soup/layer.py): one concatenated low-rank product per module equals the
adapters applied separately, only α learns, and folding α into B is exact."""

from __future__ import annotations

import pytest
import torch

from loramix.core.adapters import read_adapter
from loramix.soup import layer, table
from tests.helpers import delta_logits, logits, make_adapter


@pytest.fixture(scope="module")
def three(base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cat")
    return [
        make_adapter(base_dir, root / "a", r=4, alpha=8, seed=1),
        make_adapter(base_dir, root / "b", r=6, alpha=3, seed=2, use_rslora=True),
        make_adapter(base_dir, root / "c", r=2, alpha=2, seed=3, targets=["q_proj", "v_proj"]),
    ]


def _wrapped(base_dir, paths, **kw):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    adapters = [read_adapter(p) for p in paths]
    alpha, labels, group = layer.wrap(model, adapters, **kw)
    return model, adapters, alpha, labels, group


def test_groups_per_granularity():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.1.self_attn.q_proj"]
    assert table.groups(names, "layer") == (["0", "1"], {names[0]: 0, names[1]: 0, names[2]: 1})
    assert table.groups(names, "module")[1] == {names[0]: 0, names[1]: 1, names[2]: 2}
    assert table.groups(names, "global") == (["all"], dict.fromkeys(names, 0))
    assert table.layer_of("transformer.h.11.attn.c_attn") == 11
    from loramix.core.errors import InputError

    with pytest.raises(InputError, match="no layer index"):
        table.layer_of("multi_modal_projector.linear_1")


def test_alpha_one_is_the_exact_sum_of_the_adapters(base_dir, three):
    """W0 + Σ s_i B_i A_i, with an adapter that lacks a module contributing nothing there."""
    model, adapters, alpha, labels, _ = _wrapped(base_dir, three)
    assert alpha().shape == (len(labels), 3) and labels == ["0", "1"]
    deltas = {}
    for a in adapters:
        for name, m in a.modules.items():
            deltas[name] = deltas.get(name, 0) + m.delta()
    assert torch.allclose(logits(model), delta_logits(base_dir, deltas), atol=1e-5)


def test_layerwise_alpha_weights_each_layer_and_folds_exactly(base_dir, three):
    model, adapters, alpha, _, group = _wrapped(base_dir, three)
    with torch.no_grad():
        alpha.raw.copy_(torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, 0.25]]))
    deltas = {}
    for name in group:
        A, B = layer.fold([a.modules.get(name) for a in adapters], alpha()[group[name]])
        deltas[name] = B @ A
    assert torch.allclose(logits(model), delta_logits(base_dir, deltas), atol=1e-5)


def test_only_alpha_learns(base_dir, three):
    model, _, alpha, _, _ = _wrapped(base_dir, three[:2], granularity="module", param="softmax")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["cat_alpha.raw"] and alpha.raw.grad is not None and alpha.raw.grad.abs().sum() > 0
    assert torch.allclose(alpha().sum(dim=-1), torch.ones(alpha().shape[0]))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "cat_alpha.raw")


def test_bad_choices_are_refused(base_dir, three):
    with pytest.raises(ValueError, match="granularity"):
        _wrapped(base_dir, three[:2], granularity="block")
    with pytest.raises(ValueError, match="param"):
        layer.CatAlpha(2, 2, param="sigmoid")


@pytest.mark.parametrize("profile", ["peft", "portable"])
def test_the_folded_adapter_reloads_in_peft_with_the_fitted_logits(base_dir, three, tmp_path, profile):
    from loramix.core.profiles import layout, write_adapter
    from tests.helpers import peft_logits

    model, adapters, alpha, _, group = _wrapped(base_dir, three)
    with torch.no_grad():
        alpha.raw.copy_(torch.tensor([[0.7, 1.3, -0.4], [0.2, 0.9, 1.1]]))
    config, factors = layout(
        layer.folded_factors(adapters, alpha.raw.detach(), "free", group),
        profile,
        adapters[0].config,
        str(base_dir),
        torch.float32,
    )
    out = tmp_path / "merged"
    out.mkdir()
    write_adapter(out, config, factors)
    assert config["lora_alpha"] == config["r"]
    assert torch.allclose(peft_logits(base_dir, out), logits(model), atol=1e-5)


def test_alpha_one_equals_peft_with_both_adapters_active(base_dir, three):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, _, _, _, _ = _wrapped(base_dir, three[:2])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), three[0], adapter_name="a")
    peft.load_adapter(three[1], adapter_name="b")
    peft.base_model.set_adapter(["a", "b"])
    assert torch.allclose(logits(peft.eval()), logits(model), atol=1e-5)


def test_softmax_shares_alpha_among_the_adapters_a_module_has(base_dir, three):
    """Adapter c targets only q_proj and v_proj: in the MLP the other two share all of α."""
    model, adapters, alpha, _, group = _wrapped(base_dir, three, granularity="layer", param="softmax")
    with torch.no_grad():
        alpha.raw.copy_(torch.tensor([[0.3, -0.2, 1.0], [0.0, 0.5, -1.0]]))
    deltas = {}
    for name, g in group.items():
        modules = [a.modules.get(name) for a in adapters]
        weights = torch.softmax(alpha.raw[g][[m is not None for m in modules]].detach(), dim=0).tolist()
        present = [m for m in modules if m is not None]
        deltas[name] = sum(w * m.delta() for w, m in zip(weights, present))
    assert torch.allclose(logits(model), delta_logits(base_dir, deltas), atol=1e-5)
    folded = layer.folded_factors(adapters, alpha.raw.detach(), "softmax", group)
    for name, (A, B) in folded.items():
        assert torch.allclose(B @ A, deltas[name], atol=1e-6)
    table = layer.group_table(adapters, alpha.raw.detach(), "softmax", group)
    assert all(row[2] is not None for row in table)  # c is present in every layer (q, v)


def test_an_adapter_absent_from_every_module_of_a_group_gets_no_gradient(base_dir, three):
    model, _, alpha, _labels, group = _wrapped(base_dir, three, granularity="module", param="softmax")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    mlp = [g for name, g in group.items() if "mlp" in name]
    assert mlp and all(alpha.raw.grad[g, 2] == 0 for g in mlp)
    assert all(alpha.raw.grad[g, :2].abs().sum() > 0 for g in mlp)


def test_unfreezing_folds_alpha_into_b_and_then_trains_the_factors_only(base_dir, three):
    """tuned-cat's second stage: the output is unchanged by unfreeze, α stops learning, A and B
    learn, and the factors read back give the tuned model exactly."""
    model, _, alpha, _, _ = _wrapped(base_dir, three, granularity="module")
    with torch.no_grad():
        alpha.raw.uniform_(-1, 2, generator=torch.Generator().manual_seed(3))
    before = logits(model)
    layer.unfreeze(model)
    assert torch.allclose(logits(model), before, atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".A", ".B")) for n in trainable) and not alpha.raw.requires_grad
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    assert alpha.raw.grad is None
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * p.grad.sign())
    tuned = logits(model)
    assert not torch.allclose(tuned, before, atol=1e-3)
    deltas = {name: B @ A for name, (A, B) in layer.live_factors(model).items()}
    assert torch.allclose(tuned, delta_logits(base_dir, deltas), atol=1e-5)


def test_rank_groups_give_each_module_one_row_per_slot():
    names = ["model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj"]
    labels, first = table.groups(names, "rank", {names[0]: 2, names[1]: 3})
    assert labels == [f"{names[0]}#0", f"{names[0]}#1", f"{names[1]}#0", f"{names[1]}#1", f"{names[1]}#2"]
    assert first == {names[0]: 0, names[1]: 2}
    with pytest.raises(ValueError, match="rank"):
        table.groups(names, "rank")


def _slot_deltas(adapters, values, group):
    """Σ_i Σ_j α[first + j, i] · s_i · b_ij a_ijᵀ per module, one rank-1 product at a time."""
    deltas = {}
    for name, first in group.items():
        for i, a in enumerate(adapters):
            m = a.modules.get(name)
            for j in range(m.rank if m is not None else 0):
                term = values[first + j, i] * m.scale * torch.outer(m.B[:, j].float(), m.A[j].float())
                deltas[name] = deltas.get(name, 0) + term
    return deltas


@pytest.mark.parametrize("param", ["free", "softmax"])
def test_rank_slot_alpha_weighs_every_rank_one_component_and_folds_exactly(base_dir, three, param):
    """Ranks 4, 6 and 2 (c on q and v only): slots 4-5 hold b alone, so with softmax b's share there
    is 1 (and learns nothing) and a's and c's cells are None; the gradient stays finite everywhere."""
    model, adapters, alpha, labels, group = _wrapped(base_dir, three, granularity="rank", param=param)
    assert alpha.raw.shape == (len(labels), 3) and len(labels) == 6 * len(group)
    with torch.no_grad():
        alpha.raw.uniform_(-1, 2, generator=torch.Generator().manual_seed(5))
    rows = layer.group_table(adapters, alpha.raw.detach(), param, group, "rank")
    q = group["model.layers.0.self_attn.q_proj"]
    assert rows[q + 4][0] is None and rows[q + 4][2] is None and rows[q + 2][2] is None and rows[q + 1][2] is not None
    values = torch.tensor([[0.0 if v is None else v for v in row] for row in rows])
    if param == "softmax":
        assert rows[q + 5][1] == pytest.approx(1.0) and values[q].sum() == pytest.approx(1.0)
    deltas = _slot_deltas(adapters, values, group)
    assert torch.allclose(logits(model), delta_logits(base_dir, deltas), atol=1e-5)
    folded = layer.folded_factors(adapters, alpha.raw.detach(), param, group, "rank")
    for name, (A, B) in folded.items():
        assert A.shape[0] == sum(a.modules[name].rank for a in adapters if name in a.modules)
        assert torch.allclose(B @ A, deltas[name], atol=1e-6), name
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    assert torch.isfinite(alpha.raw.grad).all() and alpha.raw.grad[q, 0].abs() > 0
    alone = alpha.raw.grad[q + 5, 1].abs()  # b alone in slot 5: its softmax share is fixed at 1
    assert alone == 0 if param == "softmax" else alone > 0


def test_rank_slot_alpha_at_one_is_the_plain_sum(base_dir, three):
    model, adapters, _, _, _ = _wrapped(base_dir, three, granularity="rank", init=1.0)
    deltas = {}
    for a in adapters:
        for name, m in a.modules.items():
            deltas[name] = deltas.get(name, 0) + m.delta()
    assert torch.allclose(logits(model), delta_logits(base_dir, deltas), atol=1e-5)
