"""`merge --into-base`: add the merged deltas to a base model's weights and write a full model.

Works on the safetensors files directly, one tensor at a time: W ← W + ΔW computed in float32 and
stored in W's dtype; shards of at most MAX_SHARD_BYTES; config and tokenizer files copied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from loramix.errors import InputError
from loramix.models import resolve_base

MAX_SHARD_BYTES = 4 << 30
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
INDEX_NAME = "model.safetensors.index.json"


def base_tensor_files(base: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    index = base / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: base / v for k, v in weight_map.items()}
    single = base / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {k: single for k in f.keys()}
    if any(base.glob("*.bin")):
        raise InputError(f"{base}: holds pickled weights only; loramix reads safetensors only")
    raise InputError(f"{base}: no model.safetensors or {INDEX_NAME}")


def merge_into_base(method, adapters, opts, base_name: str, folder: Path, on_module: Optional[Callable] = None) -> dict:
    from loramix.merge.engine import merge_module, module_names

    base = resolve_base(base_name)
    config = json.loads((base / "config.json").read_text())
    if config.get("quantization_config"):
        raise InputError(f"{base}: is quantized; --into-base needs full-precision weights")
    files = base_tensor_files(base)
    names = module_names(adapters)
    for name in names:
        if f"{name}.weight" not in files:
            raise InputError(f"module {name} of the adapters is not in the base model {base}")
    transpose = bool(adapters[0].config.get("fan_in_fan_out"))

    def delta(key: str) -> torch.Tensor:
        name = key.removesuffix(".weight")
        d = merge_module(method, adapters, opts, name).delta()
        if on_module:
            on_module(name)
        return d.T if transpose else d

    _write_shards(files, {f"{n}.weight" for n in names}, delta, folder)
    for p in base.iterdir():
        if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES) and p.name != INDEX_NAME:
            shutil.copy2(p, folder / p.name)
    return {"base": str(base), "error": {"max": 0.0, "mean": 0.0}}


def _write_shards(files: dict[str, Path], targets: set[str], delta: Callable[[str], torch.Tensor], folder: Path) -> None:
    """Copy every base tensor into new shards, adding delta(key) to the keys in `targets`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    names = sorted(files)
    sizes = {}
    for path in sorted(set(files.values())):
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                sizes[k] = _numel(sl.get_shape()) * _itemsize(sl.get_dtype())
    shards, current, used = [], [], 0
    for k in names:
        if current and used + sizes[k] > MAX_SHARD_BYTES:
            shards.append(current)
            current, used = [], 0
        current.append(k)
        used += sizes[k]
    shards.append(current)
    weight_map = {}
    for i, keys in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for k in keys:
            with safe_open(str(files[k]), framework="pt") as f:
                w = f.get_tensor(k)
            if k in targets:
                d = delta(k)
                if d.shape != w.shape:
                    raise InputError(f"{k}: base weight has shape {tuple(w.shape)}, the adapters' delta {tuple(d.shape)}")
                w = (w.float() + d).to(w.dtype)
            tensors[k] = w
            weight_map[k] = fname
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
    if len(shards) > 1:
        total = sum(sizes.values())
        (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: str) -> int:
    return {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}.get(dtype, 1)
