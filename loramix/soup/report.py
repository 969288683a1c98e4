"""What fit-cat reports: the α table (per group and adapter) with how it was fitted.

`FitReport.to_json()` is the document `fit-cat --json` prints and `cat_weights.json` records;
`FitReport.from_json()` reads one back, also a hand-made table that holds only the α part
(granularity, param, groups, alpha, adapters): the fit's fields are then None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Alpha = list[list[float | None]]  # (groups, k); None where an adapter has no module in the group


@dataclass(frozen=True)
class SkillAdapter:
    name: str
    path: str
    sha256: str


@dataclass(frozen=True)
class DataSample:
    data: str  # the --data source
    rows: int  # rows it has
    used: int  # rows sampled (--fraction)
    sha256: str


@dataclass
class FitReport:
    granularity: str
    param: str
    groups: list[str]
    alpha: Alpha
    adapters: list[SkillAdapter]
    method: str = "cat"  # cat | lorahub | moe | arrow (fit-cat --method)
    version: str | None = None
    base: str | None = None
    init: float | None = None
    chosen_step: int | None = None  # the step whose α was written (0: the initial α)
    best_val_loss: float | None = None
    data: list[DataSample] = field(default_factory=list)
    fraction: float | None = None
    balance: bool | None = None  # --balance: the sample's rows split evenly across the sources
    seed: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    max_length: int | None = None
    val_fraction: float | None = None
    load_in_4bit: bool | None = None
    dtype: str | None = None
    steps: int | None = None
    planned_steps: int | None = None
    interrupted: bool = False
    rows_train: int | None = None
    rows_val: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    loss_curve: list[float] = field(default_factory=list)
    val_loss: list[dict] = field(default_factory=list)  # {"epoch", "step", "loss"}, step 0 first
    rank: dict | None = None  # {"min", "max"} of the written adapter
    svd_error: dict | None = None  # {"max", "mean"} relative error of --rank truncation
    tune: dict | None = None  # tuned-cat's second stage: epochs, lr, steps, loss_curve, val_loss, seconds

    @property
    def fitted(self) -> bool:
        """Whether this came from fit-cat (a hand-made table has only the α part)."""
        return self.steps is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "loramix": self.version,
            "command": "fit-cat",
            "method": self.method,
            "base": self.base,
            "granularity": self.granularity,
            "param": self.param,
            "init": self.init,
            "adapters": [asdict(a) for a in self.adapters],
            "groups": self.groups,
            "alpha": self.alpha,
            "chosen_step": self.chosen_step,
            "best_val_loss": self.best_val_loss,
            "data": [asdict(d) for d in self.data],
            "fraction": self.fraction,
            "balance": self.balance,
            "seed": self.seed,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "max_length": self.max_length,
            "val_fraction": self.val_fraction,
            "load_in_4bit": self.load_in_4bit,
            "dtype": self.dtype,
            "steps": self.steps,
            "planned_steps": self.planned_steps,
            "interrupted": self.interrupted,
            "rows_train": self.rows_train,
            "rows_val": self.rows_val,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "loss_curve": self.loss_curve,
            "val_loss": self.val_loss,
            "rank": self.rank,
            "svd_error": self.svd_error,
            "tune": self.tune,
        }

    @classmethod
    def from_json(cls, doc: dict) -> FitReport:
        """A checked table (loramix.soup.table.read) as a report; fields it lacks stay None."""
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc and k not in ("adapters", "data", "version")}
        return cls(
            **known,
            version=doc.get("loramix"),
            adapters=[SkillAdapter(a["name"], a["path"], a["sha256"]) for a in doc["adapters"]],
            data=[
                DataSample(**{k: d[k] for k in _SAMPLE_KEYS})
                for d in doc.get("data") or []
                if isinstance(d, dict) and all(k in d for k in _SAMPLE_KEYS)
            ],
        )


_SAMPLE_KEYS = ("data", "rows", "used", "sha256")
