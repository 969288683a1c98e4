"""The data-parallel helpers (loramix.core.dist): a single process is the case of one, and two
processes in a real gloo group share work and get back exactly what one process would compute."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from loramix.core import dist


def test_one_process_is_the_case_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert (dist.world(), dist.rank(), dist.is_main()) == (1, 0, True)
    assert dist.share([1, 2, 3]) == [1, 2, 3]
    assert dist.all_sum([1.5, 2.0]) == [1.5, 2.0]
    assert dist.map_parts(lambda x: x * 10, [1, 2, 3]) == [10, 20, 30]
    assert dist.map_shares(lambda xs: [x + 1 for x in xs], [4, 5]) == [5, 6]
    assert dist.gather("x") == ["x"]
    assert dist.any_true(True) and not dist.any_true(False)
    assert dist.local_device("cuda") == "cuda"


def test_share_deals_every_nth_item_from_the_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    assert dist.share(list(range(8))) == [1, 4, 7]
    assert not dist.is_main()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    calls: list[int] = []

    def work(x: int) -> int:
        calls.append(x)
        return x * x

    squares = dist.map_parts(work, list(range(7)))
    plus = dist.map_shares(lambda xs: [x + 100 for x in xs], list(range(5)))
    sums = dist.all_sum([float(rank + 1), 0.5])
    p = torch.nn.Parameter(torch.zeros(3, 2))
    q = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((3, 2), float(rank + 1))  # q has no gradient in this process
    if rank == 1:
        q.grad = torch.arange(4.0)
    dist.all_sum_grads([p, q])
    result = dict(
        squares=squares,
        calls=calls,
        plus=plus,
        sums=sums,
        p=p.grad.tolist(),
        q=q.grad.tolist(),
        any_stop=dist.any_true(rank == 1),
        none_stop=dist.any_true(False),
        gathered=dist.gather(f"r{rank}"),
    )
    dist.barrier()
    torch.save(result, f"{out}/{rank}.pt")
    dist.finish()


def test_two_processes_share_work_and_sum_exactly(tmp_path):
    import torch.multiprocessing as mp

    try:
        mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    except Exception as e:  # pragma: no cover - a machine without loopback sockets
        pytest.skip(f"cannot start a gloo group here: {e}")
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    for r in (r0, r1):  # every process gets every result, in order
        assert r["squares"] == [x * x for x in range(7)]
        assert r["plus"] == [x + 100 for x in range(5)]
        assert r["sums"] == [3.0, 1.0]
        assert r["p"] == [[3.0, 3.0]] * 3
        assert r["q"] == [0.0, 1.0, 2.0, 3.0]
        assert r["any_stop"] is True and r["none_stop"] is False
        assert r["gathered"] == ["r0", "r1"]
    assert r0["calls"] == [0, 2, 4, 6] and r1["calls"] == [1, 3, 5]  # each part computed once


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layer_numel = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    layers = dist.shard_layers(model, "cpu")
    local = sum(dist._local(p).numel() for n, p in model.named_parameters() if ".layers." in n)
    same = all(torch.equal(dist.full(p), before[n]) for n, p in model.named_parameters())
    torch.save({"layers": layers, "local": local, "total": layer_numel, "same": same}, f"{out}/{rank}.pt")
    dist.finish()


def test_fsdp_keeps_half_of_every_layer_in_each_of_two_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_fsdp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert r0["layers"] == r1["layers"] == 2
    assert r0["local"] + r1["local"] == r0["total"] and abs(r0["local"] - r1["local"]) <= r0["total"] // 10
    assert r0["same"] and r1["same"]  # gathered whole again, every weight is what it was
