"""Shared fixtures: a tiny Llama built in code and PEFT-written adapters on it (all offline)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from tests.helpers import make_adapter, tiny_llama

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def adapter_pair(base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    a = make_adapter(base_dir, root / "a", r=4, alpha=8, seed=1)
    b = make_adapter(base_dir, root / "b", r=6, alpha=3, seed=2, use_rslora=True)
    return a, b
