"""What an export reports: the adapter and base it read, and what the written file holds.

`GgufExport.to_json()` is the document `export-gguf --json` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GgufExport:
    version: str
    out: str
    adapter: str
    adapter_base: str  # the base the adapter records
    sha256: str | None  # of the adapter's weights
    base_config: str  # the config.json the layout was read from
    architecture: str  # general.architecture: llama.cpp's name of the base's family
    rank: int  # of every written pair (ranks below it are zero-padded)
    alpha: float  # adapter.lora.alpha: equal to rank, so llama.cpp's scale alpha/rank is 1
    source_ranks: list[int]  # the adapter's ranks, each once, ascending
    padded: int  # modules written at a higher rank than they have
    reordered: int  # q_proj/k_proj modules whose B rows were put in llama.cpp's order
    modules: int
    tensors: int
    dtype: str
    bytes: int
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "loramix": self.version,
            "out": self.out,
            "format": "gguf",
            "adapter": {"path": self.adapter, "base": self.adapter_base, "sha256": self.sha256},
            "base_config": self.base_config,
            "architecture": self.architecture,
            "rank": self.rank,
            "alpha": self.alpha,
            "source_ranks": self.source_ranks,
            "padded": self.padded,
            "reordered": self.reordered,
            "modules": self.modules,
            "tensors": self.tensors,
            "dtype": self.dtype,
            "bytes": self.bytes,
            "warnings": self.warnings,
            "seconds": self.seconds,
        }
