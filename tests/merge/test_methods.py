"""Algebraic properties of every registered merge method, and TIES/DARE against references."""

from __future__ import annotations

import pytest
import torch

from loramix.merge.engine import MergeOptions, merge_module, merge_to_factors, module_names
from loramix.merge.methods import REGISTRY
from loramix.merge.ops import random_keep
from tests.merge import reference
from tests.merge.builders import random_adapter, scaled_twin

METHODS = sorted(REGISTRY)
TRIMMING = {n for n, m in REGISTRY.items() if "density" in m.options}


def merged_deltas(method: str, adapters, weights, density=None, rank=None, **kw) -> dict[str, torch.Tensor]:
    opts = MergeOptions(weights=weights, density=density, rank=rank, **kw)
    result = merge_to_factors(REGISTRY[method], adapters, opts)
    return {n: B @ A for n, (A, B) in result.factors.items()}


def full_density(method: str):
    return 1.0 if method in TRIMMING else None


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return float((a - b).norm()) <= tol * max(1.0, float(b.norm()))


@pytest.mark.parametrize("method", METHODS)
def test_one_adapter_weight_one_is_identity(method):
    a = random_adapter(1)
    got = merged_deltas(method, [a], [1.0], density=full_density(method))
    for n, m in a.modules.items():
        assert close(got[n], m.delta()), n


@pytest.mark.parametrize("method", METHODS)
def test_weight_minus_one_negates(method):
    a = random_adapter(2)
    got = merged_deltas(method, [a], [-1.0], density=full_density(method))
    for n, m in a.modules.items():
        assert close(got[n], -m.delta()), n


@pytest.mark.parametrize("method", METHODS)
def test_twins_with_opposite_weights_cancel(method):
    a = random_adapter(3)
    got = merged_deltas(method, [a, scaled_twin(a, 1.0)], [1.0, -1.0], density=full_density(method))
    for n in a.modules:
        assert float(got[n].norm()) < 1e-4, n


@pytest.mark.parametrize("method", ["cat", "linear"])
def test_concatenation_is_the_exact_weighted_sum(method):
    a, b = random_adapter(4, rank=3), random_adapter(5, rank=5, scale=0.5)
    for weights in ([1.0, 1.0], [0.3, -1.7]):
        got = merged_deltas(method, [a, b], weights)
        for n in a.modules:
            want = weights[0] * a.modules[n].delta() + weights[1] * b.modules[n].delta()
            assert close(got[n], want, 1e-6), n


def test_ties_at_full_density_without_conflicts_is_linear_over_k():
    a = random_adapter(6)
    b = scaled_twin(a, 2.5)  # same signs everywhere: no conflicts
    weights = [1.0, 0.5]
    ties = merged_deltas("ties", [a, b], weights, density=1.0)
    linear = merged_deltas("linear", [a, b], [w / 2 for w in weights])
    for n in a.modules:
        assert close(ties[n], linear[n]), n


@pytest.mark.parametrize("density", [0.3, 0.75])
@pytest.mark.parametrize("majority", ["total", "frequency"])
def test_ties_matches_reference(density, majority):
    adapters = [random_adapter(7, rank=2), random_adapter(8, rank=4, scale=0.7), random_adapter(9, rank=3)]
    weights = [1.0, -0.6, 0.8]
    opts = MergeOptions(weights=weights, density=density, majority_sign=majority)
    for n in module_names(adapters):
        got = merge_module(REGISTRY["ties"], adapters, opts, n).delta()
        want = reference.ties([a.modules[n].delta() for a in adapters], weights, density, majority)
        assert close(got, want, 1e-5), n


def test_magnitude_prune_matches_reference():
    adapters = [random_adapter(10), random_adapter(11, rank=5)]
    opts = MergeOptions(weights=[0.5, 2.0], density=0.4)
    for n in module_names(adapters):
        got = merge_module(REGISTRY["magnitude_prune"], adapters, opts, n).delta()
        want = reference.magnitude_prune([a.modules[n].delta() for a in adapters], [0.5, 2.0], 0.4)
        assert close(got, want, 1e-6), n


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_combine_matches_reference_for_given_masks(method):
    """The combine step on explicitly dropped deltas equals the reference with the same masks."""
    adapters = [random_adapter(12), random_adapter(13, rank=2)]
    weights, density = [1.0, -0.5], 0.4
    n = "layers.0.up"
    deltas = torch.stack([a.modules[n].delta() for a in adapters])
    gen = torch.Generator().manual_seed(0)
    dropped = random_keep(deltas.clone(), density, gen)  # random_keep works in place
    masks = [d != 0 for d in dropped]
    got = REGISTRY[method].combine_deltas(dropped, torch.tensor(weights), "total")
    ref = getattr(reference, method)(list(deltas), weights, density, masks)
    assert close(got, ref, 1e-6)


def test_dare_drops_and_rescales_with_the_seed():
    a = random_adapter(14, rank=4, shapes={"big": (200, 150)})
    delta = a.modules["big"].delta()
    runs = [merged_deltas("dare_linear", [a], [1.0], density=0.3, rank=150, seed=s)["big"] for s in (0, 0, 1)]
    assert close(runs[0], runs[1], 1e-6)  # same seed, same drops
    assert not close(runs[0], runs[2], 1e-2)  # another seed, other drops
    kept = runs[0].abs() > 1e-3 * delta.abs().max()
    assert abs(kept.float().mean().item() - 0.3) < 0.02
    assert close(runs[0][kept], delta[kept] / 0.3, 1e-3)


def test_module_missing_from_an_adapter_contributes_nothing():
    a = random_adapter(15)
    b = random_adapter(16, shapes={"layers.0.q": (12, 10)})
    got = merged_deltas("linear", [a, b], [1.0, 1.0])
    assert close(got["layers.1.q"], a.modules["layers.1.q"].delta(), 1e-6)
    assert close(got["layers.0.q"], a.modules["layers.0.q"].delta() + b.modules["layers.0.q"].delta(), 1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_contract(method):
    """Every method: shapes, finite values, errors in [0, 1], rank as asked, determinism."""
    adapters = [random_adapter(17, rank=2), random_adapter(18, rank=3)]
    opts = MergeOptions(weights=[1.0, 0.5], rank=4, seed=3)
    first = merge_to_factors(REGISTRY[method], adapters, opts)
    again = merge_to_factors(REGISTRY[method], adapters, opts)
    for n, (A, B) in first.factors.items():
        out, inp = adapters[0].modules[n].shape
        assert A.shape == (4, inp) and B.shape == (out, 4)
        assert torch.isfinite(A).all() and torch.isfinite(B).all()
        assert 0.0 <= first.errors[n] <= 1.0
        assert torch.equal(A, again.factors[n][0]) and torch.equal(B, again.factors[n][1])


@pytest.mark.parametrize("method", METHODS)
def test_reported_error_is_the_true_error(method):
    adapters = [random_adapter(19, rank=3), random_adapter(20, rank=3)]
    opts = MergeOptions(weights=[1.0, 1.0], rank=2, density=0.5 if method in TRIMMING else None)
    result = merge_to_factors(REGISTRY[method], adapters, opts)
    for n, (A, B) in result.factors.items():
        full = merge_module(REGISTRY[method], adapters, opts, n).delta()
        true = float((full - B @ A).norm() / full.norm())
        assert abs(result.errors[n] - true) < 1e-4, n


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_engine_matches_reference_with_replayed_drops(method):
    """The engine's drops are reproducible from the documented seeding: one generator per adapter
    and module (module_seed(seed, f"{module}#{i}")) drawing torch.rand row-major over the delta."""
    from loramix.merge.engine import module_seed

    adapters = [random_adapter(40, rank=3), random_adapter(41, rank=2, scale=0.5)]
    weights, density, seed = [1.0, -0.7], 0.45, 11
    opts = MergeOptions(weights=weights, density=density, seed=seed)
    for n in module_names(adapters):
        deltas = [a.modules[n].delta() for a in adapters]
        masks = [
            torch.rand(d.shape, generator=torch.Generator().manual_seed(module_seed(seed, f"{n}#{i}"))) < density
            for i, d in enumerate(deltas)
        ]
        got = merge_module(REGISTRY[method], adapters, opts, n).delta()
        want = getattr(reference, method)(deltas, weights, density, masks)
        assert close(got, want, 1e-5), n


def test_the_command_lines_method_names_are_the_registry():
    from loramix.merge.names import MethodName

    assert [m.value for m in MethodName] == list(REGISTRY)
