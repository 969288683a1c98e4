"""`merge --into-base`: add the merged deltas to a base model's weights and write a full model.

Works on the safetensors files directly, one tensor at a time: W ← W + ΔW computed in float32 and
stored in W's dtype; shards of at most MAX_SHARD_BYTES; config and tokenizer files copied.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from loramix.core.errors import InputError
from loramix.core.models import resolve_base

MAX_SHARD_BYTES = 4 << 30
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
INDEX_NAME = "model.safetensors.index.json"
_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot be read as JSON ({e})")


def base_tensor_files(base: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    index = base / INDEX_NAME
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(f"{index}: has no weight_map")
        return {k: base / v for k, v in weight_map.items()}
    single = base / "model.safetensors"
    if single.is_file():
        return dict.fromkeys(_headers(single), single)
    if any(base.glob("*.bin")):
        raise InputError(f"{base}: holds pickled weights only; loramix reads safetensors only")
    raise InputError(f"{base}: no model.safetensors or {INDEX_NAME}")


def _headers(path: Path) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype) from a safetensors header, without reading the data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as e:  # safetensors' own error type, or OSError
        raise InputError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})")


def _load(path: Path, key: str) -> torch.Tensor:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(key)
    except Exception as e:
        raise InputError(f"{path}: cannot read tensor {key} ({e})")


def merge_into_base(
    method, adapters, opts, base_name: str, folder: Path, on_module: Callable | None = None
) -> tuple[str, list[str]]:
    """Write the base with the merged deltas added into `folder`; returns (the base's folder, warnings)."""
    from loramix.merge.engine import merge_module, module_names

    base = resolve_base(base_name)
    if _read_json(base / "config.json").get("quantization_config"):
        raise InputError(f"{base}: is quantized; --into-base needs full-precision weights")
    files = base_tensor_files(base)
    headers: dict[str, tuple[list[int], str]] = {}
    for path in sorted(set(files.values())):
        headers.update(_headers(path))
    transpose = bool(adapters[0].config.get("fan_in_fan_out"))
    names = module_names(adapters)
    _check_modules(adapters, names, headers, base, transpose)

    def delta(key: str) -> torch.Tensor:
        name = key.removesuffix(".weight")
        d = merge_module(method, adapters, opts, name).delta()
        if on_module:
            on_module(name)
        return d.T if transpose else d

    _write_shards(files, headers, {f"{n}.weight" for n in names}, delta, folder)
    for p in base.iterdir():
        if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES) and p.name != INDEX_NAME:
            shutil.copy2(p, folder / p.name)
    warnings = []
    if Path(adapters[0].base).resolve() != base.resolve() and adapters[0].base != base_name:
        warnings.append(f"the adapters record base {adapters[0].base!r}; merged into {str(base)!r}")
    return str(base), warnings


def _check_modules(adapters, names: list[str], headers: dict, base: Path, transpose: bool) -> None:
    """Every merged module must exist in the base with the shape of its delta."""
    for name in names:
        key = f"{name}.weight"
        if key not in headers:
            raise InputError(f"module {name} of the adapters is not in the base model {base}")
        out, inp = next(a.modules[name].shape for a in adapters if name in a.modules)
        want = [inp, out] if transpose else [out, inp]
        if headers[key][0] != want:
            raise InputError(f"{key}: the base weight has shape {headers[key][0]}, the adapters' delta {want}")


def _write_shards(
    files: dict, headers: dict, targets: set[str], delta: Callable[[str], torch.Tensor], folder: Path
) -> None:
    """Copy every base tensor into new shards, adding delta(key) to the keys in `targets`."""
    from safetensors.torch import save_file

    sizes = {k: _numel(shape) * _ITEMSIZE.get(dtype, 1) for k, (shape, dtype) in headers.items()}
    shards: list[list[str]] = []
    current: list[str] = []
    used = 0
    for k in sorted(files):
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
            w = _load(files[k], k)
            if k in targets:
                w = (w.float() + delta(k)).to(w.dtype)
            tensors[k] = w
            weight_map[k] = fname
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
