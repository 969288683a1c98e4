"""What a merge reports: the request as it was understood, what was written, and how exactly.

`MergeReport.to_json()` is the document `merge --json` prints and `loramix_merge.json` records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Span:
    min: float
    max: float

    @classmethod
    def of(cls, values: list) -> Span:
        return cls(min(values), max(values))

    def to_json(self) -> dict:
        return {"min": self.min, "max": self.max}


@dataclass(frozen=True)
class InputAdapter:
    path: str
    base: str
    sha256: str | None

    def to_json(self) -> dict:
        return {"path": self.path, "base": self.base, "sha256": self.sha256}


@dataclass
class MergeReport:
    version: str
    out: str
    method: str
    kind: str  # exact, truncated or factored (loramix.merge.methods.base)
    profile: str | None  # None for --into-base
    into_base: str | None
    adapters: list[InputAdapter]
    weights: list[float] | None  # None when an α table gave them
    cat_weights: str | None  # that table
    density: float | None
    majority_sign: str | None
    seed: int
    error_max: float  # relative Frobenius error of the written factors, worst module
    error_mean: float
    modules: int
    seconds: float = 0.0
    # an adapter was written
    rank: Span | None = None
    errors: dict[str, float] = field(default_factory=dict)
    dtype: str | None = None
    # a full model was written (--into-base)
    base: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.error_max == 0.0

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "loramix": self.version,
            "out": self.out,
            "method": self.method,
            "kind": self.kind,
            "exact": self.exact,
            "profile": self.profile,
            "into_base": self.into_base,
            "adapters": [a.to_json() for a in self.adapters],
            "weights": self.weights,
            "cat_weights": self.cat_weights,
            "density": self.density,
            "majority_sign": self.majority_sign,
            "seed": self.seed,
        }
        error = {"max": self.error_max, "mean": self.error_mean}
        if self.into_base is None:
            assert self.rank is not None
            doc.update(rank=self.rank.to_json(), error=error, errors=self.errors, dtype=self.dtype)
        else:
            doc.update(base=self.base, error=error)
        doc.update(warnings=self.warnings, seconds=self.seconds, modules=self.modules)
        return doc
