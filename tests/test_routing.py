"""The routed mixture (loramix/core/routing.py): router shapes, what the gates do to the output,
Arrow's prototypes, and the folder format read back."""

from __future__ import annotations

import json

import pytest
import torch

from loramix.core import routing
from loramix.core.adapters import read_adapter
from loramix.core.errors import InputError
from tests.helpers import delta_logits, logits, make_adapter, peft_logits


@pytest.fixture(scope="module")
def three(base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("routed")
    return [
        make_adapter(base_dir, root / "a", r=4, alpha=8, seed=1),
        make_adapter(base_dir, root / "b", r=6, alpha=3, seed=2, use_rslora=True),
        make_adapter(base_dir, root / "c", r=2, alpha=2, seed=3, targets=["q_proj", "v_proj"]),
    ]


def _routed_logits(base_dir, deltas):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    handles = routing.attach(model, deltas)
    try:
        return logits(model)
    finally:
        routing.detach(handles)


def test_router_shapes_follow_the_modules_and_the_experts(three):
    adapters = [read_adapter(p) for p in three]
    deltas = routing.build(adapters)
    assert sorted(deltas) == sorted({n for a in adapters for n in a.modules})
    for name, d in deltas.items():
        n_in = adapters[0].modules[name].shape[1]
        assert d.weight.shape == (3, n_in) and d.bias.shape == (3,)
        assert d.A.shape[0] == sum(a.modules[name].rank for a in adapters if name in a.modules)
        assert d.weight.requires_grad and not d.A.requires_grad


def test_a_router_that_picks_one_expert_gives_that_adapter(base_dir, three):
    adapters = [read_adapter(p) for p in three[:2]]
    deltas = routing.build(adapters)
    for d in deltas.values():
        with torch.no_grad():
            d.bias.copy_(torch.tensor([0.0, 60.0]))  # every token: expert 1 only
    torch.testing.assert_close(_routed_logits(base_dir, deltas), peft_logits(base_dir, three[1]), atol=2e-5, rtol=0)


def test_a_zero_router_is_the_average_of_the_experts(base_dir, three):
    adapters = [read_adapter(p) for p in three[:2]]
    average = {n: sum(a.modules[n].delta() for a in adapters) / 2 for n in adapters[0].modules}
    got = _routed_logits(base_dir, routing.build(adapters))
    torch.testing.assert_close(got, delta_logits(base_dir, average), atol=2e-5, rtol=0)


def test_an_expert_without_a_module_takes_no_share_there(three):
    adapters = [read_adapter(p) for p in three]
    deltas = routing.build(adapters)
    x = torch.randn(5, 32)
    up = deltas["model.layers.0.mlp.up_proj"].gates(x)  # c has no up_proj
    q = deltas["model.layers.0.self_attn.q_proj"].gates(x)
    torch.testing.assert_close(up, torch.tensor([[0.5, 0.5, 0.0]]).expand(5, 3))
    torch.testing.assert_close(q, torch.full((5, 3), 1 / 3))


def test_top_k_keeps_the_largest_logits_only():
    adapters_like = [_module(4, 8, 1), _module(4, 8, 2), _module(4, 8, 3)]
    d = routing.RoutedDelta(adapters_like, "learned", top_k=1)
    with torch.no_grad():
        d.weight.normal_()
    x = torch.randn(7, 8)
    g = d.gates(x)
    assert torch.equal((g > 0).sum(-1), torch.ones(7, dtype=torch.long))
    assert torch.equal(g.argmax(-1), (x @ d.weight.T).argmax(-1))


def test_arrow_routes_by_each_experts_top_right_singular_vector(three):
    adapters = [read_adapter(p) for p in three[:2]]
    deltas = routing.build(adapters, "arrow", temperature=0.5)
    name = "model.layers.1.mlp.down_proj"
    d = deltas[name]
    for i, a in enumerate(adapters):
        dense = a.modules[name].delta()
        v = d.weight[i]
        assert torch.linalg.vector_norm(v) == pytest.approx(1.0, abs=1e-5)
        top = torch.linalg.svdvals(dense)[0]
        assert torch.linalg.vector_norm(dense @ v) == pytest.approx(float(top), rel=1e-4)
    x = torch.randn(4, d.weight.shape[1])
    expected = torch.softmax((x @ d.weight.T).abs() / 0.5, dim=-1)
    torch.testing.assert_close(d.gates(x), expected)


def test_a_saved_mixture_loads_with_the_same_routers(base_dir, three, tmp_path):
    adapters = [read_adapter(p) for p in three[:2]]
    deltas = routing.build(adapters)
    for d in deltas.values():
        with torch.no_grad():
            d.weight.normal_()
            d.bias.normal_()
    manifest = routing.Manifest("learned", str(base_dir), ["a", "b"], sorted(deltas), 2, 1.0, extra={"fit": {}})
    routing.save(tmp_path, manifest, adapters, deltas)
    assert routing.is_routed(tmp_path)
    loaded, experts, again = routing.load(tmp_path)
    assert loaded.kind == "learned" and [e.name for e in experts] == ["0", "1"]
    for name, d in deltas.items():
        assert torch.equal(again[name].weight, d.weight) and torch.equal(again[name].bias, d.bias)
    torch.testing.assert_close(_routed_logits(base_dir, again), _routed_logits(base_dir, deltas))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda doc: doc.update(kind="topk"), "kind 'topk' is unknown"),
        (lambda doc: doc.update(top_k=5), "top_k 5 must be a whole number from 1 to 2"),
        (lambda doc: doc.update(format="other"), "not a loramix routed mixture"),
        (lambda doc: doc["modules"].pop(), "its modules are not the ones its experts have"),
    ],
)
def test_a_damaged_manifest_is_refused_naming_the_file(base_dir, three, tmp_path, edit, message):
    adapters = [read_adapter(p) for p in three[:2]]
    deltas = routing.build(adapters)
    routing.save(
        tmp_path, routing.Manifest("learned", str(base_dir), ["a", "b"], sorted(deltas), 2, 1.0), adapters, deltas
    )
    file = tmp_path / routing.MANIFEST
    doc = json.loads(file.read_text())
    edit(doc)
    file.write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        routing.load(tmp_path)
    assert message in e.value.message and str(file) in e.value.message


def test_a_router_tensor_of_the_wrong_shape_is_refused(base_dir, three, tmp_path):
    from safetensors.torch import load_file, save_file

    adapters = [read_adapter(p) for p in three[:2]]
    deltas = routing.build(adapters)
    routing.save(
        tmp_path, routing.Manifest("learned", str(base_dir), ["a", "b"], sorted(deltas), 2, 1.0), adapters, deltas
    )
    file = tmp_path / routing.ROUTER_FILE
    tensors = load_file(str(file))
    tensors["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(3, 32)
    save_file(tensors, str(file))
    with pytest.raises(InputError, match=r"q_proj\.weight is missing, not of shape"):
        routing.load(tmp_path)


def _module(rank: int, n_in: int, seed: int):
    from loramix.core.adapters import LoraModule

    g = torch.Generator().manual_seed(seed)
    return LoraModule(torch.randn(rank, n_in, generator=g), torch.randn(6, rank, generator=g), 1.0)
