"""Running as one of several processes (data parallel), under `torchrun` or `accelerate launch`.

Both launchers set RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/MASTER_PORT); loramix then
joins their process group (gloo on CPUs, nccl on GPUs). Every process holds the whole model (or,
with --fsdp, its shards of the decoder layers: `shard_layers`) and the same data order; each works
on its share of every batch (`share`), gradients and sums are added across processes (`all_sum`,
`all_sum_grads`), and only the first process writes outputs and prints (`is_main`). A single
process is the case of one: every helper is then a no-op, so the jobs read the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def local_device(device: str) -> str:
    """On GPUs each process takes its own (LOCAL_RANK): cuda -> cuda:N."""
    if world() > 1 and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def start() -> None:
    """Join the launcher's process group, once (a single process joins nothing). Tensors on the
    CPU and Python objects go through gloo, tensors on a GPU through nccl; each process works on
    the GPU of its LOCAL_RANK."""
    if world() == 1:
        return
    import torch
    import torch.distributed as td

    if td.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        td.init_process_group(backend="cpu:gloo,cuda:nccl")
    else:
        td.init_process_group(backend="gloo")


def finish() -> None:
    """Leave the process group (at exit), if one was joined."""
    if world() == 1:
        return
    import torch.distributed as td

    if td.is_initialized():
        td.destroy_process_group()


def share(items: Sequence[T]) -> list[T]:
    """This process's share of `items`: every world()-th one from its rank."""
    return list(items[rank() :: world()]) if world() > 1 else list(items)


def all_sum(values: list[float]) -> list[float]:
    """`values` summed over the processes (float64, in order)."""
    if world() == 1:
        return list(values)
    import torch
    import torch.distributed as td

    start()
    t = torch.tensor(values, dtype=torch.float64)
    td.all_reduce(t)
    return t.tolist()


def all_sum_grads(params: list[torch.Tensor]) -> None:
    """Add the gradients of `params` over the processes, in place (each process computed its part
    of one global loss, so the sum is the single-process gradient)."""
    if world() == 1:
        return
    import torch
    import torch.distributed as td

    start()
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if _sharded(p):  # FSDP's reduce-scatter averaged it over the processes: the loop wants the sum
            _local(p.grad).mul_(world())
        else:
            grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])  # one collective, not one per tensor
    td.all_reduce(flat)
    at = 0
    for g in grads:
        g.copy_(flat[at : at + g.numel()].view_as(g))
        at += g.numel()


def any_true(flag: bool) -> bool:
    """Whether `flag` holds in any process (a Ctrl-C reaching one of them stops all)."""
    return all_sum([1.0 if flag else 0.0])[0] > 0


def gather(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order (a list of one without a process group)."""
    if world() == 1:
        return [obj]
    import torch.distributed as td

    start()
    out: list[Any] = [None] * world()
    td.all_gather_object(out, obj)
    return out


def map_parts(fn: Callable[[T], R], parts: Sequence[T]) -> list[R]:
    """[fn(part) for part in parts], the parts dealt out among the processes (part i to process
    i mod world()); every process gets every result, in order. Each part is computed as a single
    process would compute it, so the results are the same however many processes share them."""
    if world() == 1:
        return [fn(p) for p in parts]
    mine = {i: fn(parts[i]) for i in range(rank(), len(parts), world())}
    done: dict[int, R] = {}
    for theirs in gather(mine):
        done.update(theirs)
    return [done[i] for i in range(len(parts))]


def map_shares(fn: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R]:
    """fn(list) -> one result per item, with each process calling it on its share of `items`
    (every world()-th from its rank); every process gets every result, in order."""
    if world() == 1:
        return fn(list(items))
    groups = [list(range(r, len(items), world())) for r in range(world())]
    out: list[Any] = [None] * len(items)
    for group, results in zip(groups, map_parts(lambda g: fn([items[i] for i in g]), groups)):
        for i, result in zip(group, results):
            out[i] = result
    return out


def shard_layers(model, device: str) -> int:
    """FSDP: shard the parameters of every decoder layer (the model's `_no_split_modules` classes)
    across the processes, so each holds 1/world() of them; the rest of the model (embeddings, final
    norm, output head) stays whole on every process. Gradients of sharded parameters are summed
    over the processes by `all_sum_grads`, like the others. Returns the number of layers sharded (0: none found)."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    start()
    kinds = set(getattr(model, "_no_split_modules", None) or [])
    for inner in (getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        kinds |= set(getattr(inner, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in kinds]
    if not layers:
        return 0
    mesh = init_device_mesh(torch.device(device).type, (world(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    for p in model.parameters():
        if not _sharded(p) and p.device != torch.device(device):
            p.data = p.data.to(device)
    for b in model.buffers():
        b.data = b.data.to(device)
    return len(layers)


def check_fsdp(fsdp: bool) -> None:
    """--fsdp needs the processes of a launcher to shard across."""
    if fsdp and world() == 1:
        from loramix.core.errors import InputError

        raise InputError(
            "--fsdp shards the base across the processes of one run, and this is a single process",
            hint="launch it with torchrun --nproc_per_node N (or accelerate launch), or drop --fsdp",
        )


def shard_or_refuse(model, device: str, base: str) -> None:
    if shard_layers(model, device) == 0:
        from loramix.core.errors import InputError

        raise InputError(f"--fsdp: {base} names no decoder layer class to shard (_no_split_modules)")


def _sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole of a tensor FSDP shards (every process must call this, in the same order)."""
    return t.full_tensor() if _sharded(t) else t  # type: ignore[attr-defined]


def like(target: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """`whole` laid out as `target` is: this process's shard of it when `target` is sharded."""
    if not _sharded(target):
        return whole
    from torch.distributed.tensor import distribute_tensor

    mesh, placements = target.device_mesh, target.placements  # type: ignore[attr-defined]
    return distribute_tensor(whole.to(target.device, target.dtype), mesh, placements)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> None:
    """torch's clip_grad_norm_ (total L2 norm of all gradients), also when some are FSDP shards."""
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    if not any(_sharded(g) for g in grads):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    whole = sum(float(_local(g).float().pow(2).sum()) for g in grads if not _sharded(g))
    shards = sum(float(_local(g).float().pow(2).sum()) for g in grads if _sharded(g))
    total = (whole + all_sum([shards])[0]) ** 0.5
    coefficient = min(1.0, max_norm / (total + 1e-6))
    if coefficient < 1.0:
        for g in grads:
            _local(g).mul_(coefficient)


def _local(t) -> torch.Tensor:
    """This process's part of a tensor: its shard under FSDP, else the tensor itself."""
    return t.to_local() if _sharded(t) else t


def barrier() -> None:
    if world() > 1:
        import torch.distributed as td

        start()
        td.barrier()
