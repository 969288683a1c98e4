"""The `export-gguf` job: one PEFT adapter written as llama.cpp's LoRA GGUF.

The file has the layout llama.cpp's own convert_lora_to_gguf.py writes (general.type "adapter",
adapter.type "lora", adapter.lora.alpha, the base's general.architecture, tensors named
`<base tensor>.lora_a` (r, in) and `.lora_b` (out, r), float32), with two differences that make
it exact for any adapter loramix reads:

- every module's scale s (lora_alpha/r, rsLoRA's alpha/√r, alpha_pattern, rank_pattern) is
  folded into B, and every pair is written at one rank R (lower ranks zero-padded: B·A is
  unchanged) with alpha = R. llama.cpp reads one alpha per file and scales each pair by
  alpha / (that pair's rank), so with the scales in B and one rank its scale is 1 for every
  module (the converter reads only lora_alpha: rsLoRA and the patterns come out wrong).
- the base's facts (family, heads, sizes) come from its config.json alone, and every module's
  shape is checked against them.

For Llama bases the rows of B on q_proj and k_proj are put in llama.cpp's order
(loramix.export.layout.rope_order), as the converter does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loramix import __version__
from loramix.core import log
from loramix.core.adapters import Adapter, LoraModule, read_adapter
from loramix.core.errors import AdapterError, InputError
from loramix.core.models import local_folder, same_base
from loramix.core.modules import parse
from loramix.core.outputs import check_file, write_file_atomic
from loramix.export.layout import BaseLayout, read_layout, rope_order, tensor_name, within
from loramix.export.report import GgufExport

if TYPE_CHECKING:
    import numpy as np

DTYPE = "F32"
_REBUILD = "merge it into the base (loramix merge --into-base) and convert that model instead"


@dataclass(frozen=True)
class GgufRequest:
    adapter: Path
    out: Path
    base: str | None = None  # the base whose config.json gives the layout [default: the one the adapter records]
    force: bool = False


@dataclass
class Pair:
    """One module as llama.cpp reads it: ΔW = B @ A with the scale folded into B."""

    tensor: str  # the base tensor it changes, blk.N.attn_q.weight
    A: np.ndarray  # (rank, in) float32
    B: np.ndarray  # (out, rank) float32, rows in llama.cpp's order
    reordered: bool = False

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def export_gguf(req: GgufRequest) -> GgufExport:
    """Read, check, convert and write one adapter; nothing is written when anything is refused."""
    start = time.time()
    check_file(req.out, req.force, "--out", inputs=[req.adapter])
    adapter = read_adapter(req.adapter)
    refuse_unwritable(adapter)
    base = req.base if req.base is not None else adapter.base
    config = base_config(base)
    check_file(req.out, req.force, "--out", inputs=[req.adapter, config.parent])
    layout = read_layout(config)
    warnings = []
    if req.base is not None and not same_base(adapter.base, req.base):
        warnings.append(f"{adapter.path} records the base {adapter.base!r}; exported for {req.base}")
    if adapter.base_copies:
        log.note(f"{adapter.path}: its copies of the base's {', '.join(adapter.base_copies)} are not written")
    pairs = [to_pair(layout, adapter, name, m) for name, m in adapter.modules.items()]
    pairs.sort(key=lambda p: _order(p.tensor))
    rank = max(p.rank for p in pairs)
    padded = sum(p.rank < rank for p in pairs)
    pairs = [pad(p, rank) for p in pairs]
    write_file_atomic(
        req.out, req.force, lambda tmp: write_gguf(tmp, layout.family.architecture, adapter.name, rank, pairs)
    )
    return GgufExport(
        version=__version__,
        out=str(req.out),
        adapter=str(adapter.path),
        adapter_base=adapter.base,
        sha256=adapter.sha256(),
        base_config=str(config),
        architecture=layout.family.architecture,
        rank=rank,
        alpha=float(rank),
        source_ranks=sorted({m.rank for m in adapter.modules.values()}),
        padded=padded,
        reordered=sum(p.reordered for p in pairs),
        modules=len(pairs),
        tensors=2 * len(pairs),
        dtype=DTYPE,
        bytes=req.out.stat().st_size,
        seconds=round(time.time() - start, 3),
        warnings=warnings,
    )


def refuse_unwritable(adapter: Adapter) -> None:
    """What a LoRA GGUF cannot hold: full trained modules, DoRA, LoRAs on expert parameters."""
    if adapter.saved:
        raise AdapterError(
            f"{adapter.path}: its modules_to_save ({', '.join(sorted(adapter.saved))}) are full trained weights, "
            "which a LoRA GGUF cannot hold",
            hint=_REBUILD,
        )
    for name, m in adapter.modules.items():
        if m.magnitude is not None:
            raise AdapterError(
                f"{adapter.path}: module {name} is DoRA; llama.cpp applies plain LoRAs (B·A) only", hint=_REBUILD
            )
        if m.slot is not None:
            raise AdapterError(
                f"{adapter.path}: module {name} is a LoRA on an expert parameter; export gguf writes LoRAs on "
                "linear layers only",
                hint=_REBUILD,
            )


def base_config(name: str) -> Path:
    """The config.json of the base `name`: in its local folder, or in the hub cache for a hub id
    (never downloaded: only this one file is read)."""
    folder = local_folder(name)
    if folder is not None:
        config = folder / "config.json"
        if not config.is_file():
            raise InputError(f"{folder}: not a model folder (no config.json)")
        return config
    cached = _cached_config(name)
    if cached is None:
        raise InputError(
            f"base model {name!r}: not a local folder, and the hub cache holds no config.json for it",
            hint="pass --base with the base's folder (only its config.json is read)",
        )
    return cached


def _cached_config(repo: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json")
    except Exception:  # not a valid repo id, or no huggingface_hub
        return None
    return Path(found) if isinstance(found, str) else None


def to_pair(layout: BaseLayout, adapter: Adapter, name: str, m: LoraModule) -> Pair:
    """The module's pair in llama.cpp's terms, refusing a module the base does not have."""
    tensor = tensor_name(layout, name, adapter.path)
    expected = layout.shape(within(name))
    if m.shape != expected:
        raise AdapterError(
            f"{adapter.path}: module {name} has shape {m.shape}, but the base ({layout.config}) has {expected}",
            hint="the adapter was trained on another base; pass --base with that base's folder",
        )
    A = m.A.float().contiguous().numpy()
    B = (m.B.float() * m.scale).numpy()
    heads = layout.heads_of(within(name))
    if heads is not None:
        B = B[rope_order(B.shape[0], heads)]
    return Pair(tensor, A, B, reordered=heads is not None)


def pad(pair: Pair, rank: int) -> Pair:
    """The same B·A at rank `rank`: A gets zero rows, B zero columns."""
    import numpy as np

    extra = rank - pair.rank
    if extra == 0:
        return pair
    A = np.concatenate([pair.A, np.zeros((extra, pair.A.shape[1]), np.float32)], axis=0)
    B = np.concatenate([pair.B, np.zeros((pair.B.shape[0], extra), np.float32)], axis=1)
    return Pair(pair.tensor, A, B, pair.reordered)


def _order(tensor: str) -> tuple[int, str]:
    layer = parse(tensor).layer
    return (-1 if layer is None else layer, tensor)


def write_gguf(path: Path, architecture: str, name: str, rank: int, pairs: list[Pair]) -> None:
    """The GGUF file itself, with the `gguf` package's writer."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, arch=architecture)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
        for p in pairs:
            writer.add_tensor(p.tensor + ".lora_a", np.ascontiguousarray(p.A, np.float32))
            writer.add_tensor(p.tensor + ".lora_b", np.ascontiguousarray(p.B, np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
