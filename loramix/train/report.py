"""What train-skill reports: the run's setup, its resolved options and what training did.

`TrainLog.to_json()` is the document `train-skill --json` prints and `train_log.json` records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from loramix.train.loop import History


@dataclass(frozen=True)
class TrainSetup:
    """What the run was made of: base, data and where it ran."""

    base: str
    data: str
    data_sha256: str
    rows: int
    rows_too_long: int
    train_rows: int
    val_rows: int
    rows_per_step: int
    device: str
    dtype: str
    threads: int
    processes: int = 1  # data-parallel processes (torchrun, accelerate launch)
    fsdp: bool = False  # the decoder layers sharded across them


@dataclass(frozen=True)
class TrainOptions:
    """The options as the run used them (targets and lr resolved)."""

    rank: int
    alpha: float
    targets: list[str]
    lr: float
    epochs: int
    max_steps: int | None
    batch_size: int
    grad_accum: int
    max_length: int
    val_fraction: float
    warmup: float
    seed: int
    load_in_4bit: bool
    limit: int | None
    target_parameters: list[str] | None = None


@dataclass(frozen=True)
class TrainLog:
    version: str
    setup: TrainSetup
    options: TrainOptions
    steps_per_epoch: int
    history: History

    @property
    def steps(self) -> int:
        return len(self.history.loss)

    @property
    def final_loss(self) -> float | None:
        return self.history.loss[-1] if self.history.loss else None

    @property
    def tokens_per_second(self) -> float | None:
        h = self.history
        return round(h.tokens / h.seconds, 1) if h.seconds else None

    def to_json(self) -> dict[str, Any]:
        h = self.history
        return {
            "loramix": self.version,
            "command": "train-skill",
            **asdict(self.setup),
            "options": asdict(self.options),
            "steps": self.steps,
            "steps_per_epoch": self.steps_per_epoch,
            "tokens": h.tokens,
            "seconds": h.seconds,
            "tokens_per_second": self.tokens_per_second,
            "final_loss": self.final_loss,
            "val_loss": h.val,
            "loss_curve": h.loss,
            "resumed_at_step": h.resumed_at,
        }
