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

from loramix.core import jsontext
from loramix.core.errors import InputError
from loramix.core.models import resolve_base
from loramix.core.profiles import check_finite
from loramix.core.targets import stored_transposed

MAX_SHARD_BYTES = 4 << 30
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
INDEX_NAME = "model.safetensors.index.json"
_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def _read_json(path: Path) -> dict:
    try:
        doc = jsontext.loads(path.read_text(), str(path))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot be read as JSON ({e})")
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def base_tensor_files(base: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    index = base / INDEX_NAME
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError(f"{index}: has no weight_map of tensor names to file names")
        files = {k: base / v for k, v in weight_map.items()}
        missing = sorted({str(f) for f in files.values() if not f.is_file()})
        if missing:
            raise InputError(f"{index}: names {missing[0]}, which is not there")
        return files
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


class BaseWeights:
    """A base model's weights read from its safetensors files, one tensor at a time: what it has
    (names, shapes, dtypes from the headers alone), each module checked against the adapters."""

    def __init__(self, name: str):
        self.folder = resolve_base(name)
        self.config = _read_json(self.folder / "config.json")
        self.files = base_tensor_files(self.folder)
        self.headers: dict[str, tuple[list[int], str]] = {}
        for path in sorted(set(self.files.values())):
            self.headers.update(_headers(path))
        self.transposed: dict[str, bool] = {}
        self._cached: tuple[str, torch.Tensor] | None = None

    def tensor(self, module: str, param: str = "weight") -> torch.Tensor | None:
        """`module`'s weight (or other parameter), or None when the files hold none (a tied output
        head, say)."""
        key = f"{module}.{param}"
        return _load(self.files[key], key) if key in self.files else None

    def rows(self, module: str) -> Callable[[int, int], torch.Tensor]:
        """Rows of `module`'s weight as (out, in) float32, the last module's kept in memory (merges
        go one module at a time); check_modules must have run (it knows the orientation)."""

        def get(r0: int, r1: int) -> torch.Tensor:
            if self._cached is None or self._cached[0] != module:
                w = self.tensor(module)
                assert w is not None
                w = w.float()
                self._cached = (module, w.T if self.transposed.get(module) else w)
            return self._cached[1][r0:r1]

        return get

    def check_modules(self, adapters) -> None:
        """Every module of the adapters must exist in the base with the shape of its delta, stored
        (out, in) or, for GPT-2's Conv1D, (in, out); records which are stored transposed. Experts
        of a 3-D parameter were read against this base's architecture (loramix.core.params)."""
        shapes = {n: m.shape for a in adapters for n, m in a.modules.items() if m.slot is None}
        for name in shapes:
            if f"{name}.weight" not in self.headers:
                raise InputError(f"module {name} of the adapters is not in the base model {self.folder}")
        stored = {name: self.headers[f"{name}.weight"][0] for name in shapes}
        self.transposed = stored_transposed(self.folder, shapes, stored)
        for name, (out, inp) in shapes.items():
            want = [inp, out] if self.transposed[name] else [out, inp]
            if stored[name] != want:
                raise InputError(f"{name}.weight: the base weight has shape {stored[name]}, the adapters' delta {want}")


def merge_into_base(
    method, adapters, opts, base_name: str, folder: Path, on_module: Callable | None = None, saved: dict | None = None
) -> str:
    """Write the base with the merged deltas added into `folder`, and the merged modules_to_save
    (`saved`: name -> {param: tensor}) in place of theirs; returns the base's folder."""
    from loramix.merge.engine import merge_module, module_names

    base = BaseWeights(base_name)
    if base.config.get("quantization_config"):
        raise InputError(f"{base.folder}: is quantized; --into-base needs full-precision weights")
    base.check_modules(adapters)
    names = module_names(adapters)
    slots = {n: m.slot for a in adapters for n, m in a.modules.items() if m.slot is not None}

    def module_delta(name: str, transposed: bool) -> torch.Tensor:
        d = merge_module(method, adapters, opts, name).delta()
        if on_module:
            on_module(name)
        return d.T if transposed else d

    replace = {f"{n}.{p}": t for n, params in (saved or {}).items() for p, t in params.items()}
    if slots:  # experts are stored per expert on disk (transformers converts them on loading)
        _through_transformers(base, names, slots, module_delta, folder, replace)
    else:
        delta = lambda key: module_delta(key.removesuffix(".weight"), base.transposed[key.removesuffix(".weight")])  # noqa: E731
        _write_shards(base.files, base.headers, {f"{n}.weight" for n in names}, delta, folder, replace)
    for p in base.folder.iterdir():
        if (
            p.is_file()
            and not p.name.endswith(WEIGHT_SUFFIXES)
            and p.name != INDEX_NAME
            and not (folder / p.name).exists()
        ):
            shutil.copy2(p, folder / p.name)
    return str(base.folder)


def _through_transformers(
    base: BaseWeights, names: list[str], slots: dict, module_delta, folder: Path, replace: dict
) -> None:
    """Merge through transformers' own loading and saving, the whole model in memory: checkpoints
    keep routed experts one tensor per expert (Mixtral's experts.E.w1/w3 for the fused gate_up_proj)
    and only transformers knows each model's conversion."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base.folder, dtype="auto", use_safetensors=True)
    weights = dict(model.named_parameters())
    experts: dict[str, list[str]] = {}
    for name in names:
        if name in slots:
            experts.setdefault(slots[name].key, []).append(name)
    with torch.no_grad():
        for name in names:
            if name not in slots:
                w = weights[f"{name}.weight"]
                w.copy_((w.float() + module_delta(name, base.transposed[name])).to(w.dtype))
                check_finite(name, w)
        for key, members in experts.items():
            w = weights[key]
            for name in members:
                slot = slots[name]
                target = w[slot.expert] if slot.experts > 1 else w
                target.copy_((target.float() + module_delta(name, slot.transposed)).to(w.dtype))
                check_finite(f"{name}", target)
        for key, tensor in replace.items():
            weights[key].copy_(tensor.to(weights[key].dtype))
    model.save_pretrained(folder, safe_serialization=True)


def _write_shards(
    files: dict,
    headers: dict,
    targets: set[str],
    delta: Callable[[str], torch.Tensor],
    folder: Path,
    replace: dict | None = None,
) -> None:
    """Copy every base tensor into new shards, adding delta(key) to the keys in `targets` and
    putting `replace`'s tensors (merged modules_to_save) in place of theirs."""
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
                check_finite(k, w)
            elif replace and k in replace:
                w = replace[k].to(w.dtype)
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
