"""What eval reports: one score per model on the same items, with the settings that produced it.

`EvalReport.to_json()` is the document `eval --json` prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ModelScore:
    """One model's result: the metric's mean (accuracy or loss) and its 95% interval."""

    score: float
    ci: tuple[float, float]
    items_scored: int
    tokens: int
    seconds: float  # unrounded; the document rounds it to milliseconds
    correct: int | None = None  # generation metrics
    perplexity: float | None = None  # the loss metric
    name: str = ""
    adapter: str | None = None  # its folder, None for the base

    @property
    def tokens_per_second(self) -> float | None:
        return round(self.tokens / self.seconds, 1) if self.seconds else None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "adapter": self.adapter, "score": self.score}
        if self.perplexity is not None:
            doc["perplexity"] = self.perplexity
        doc["ci"] = list(self.ci)
        if self.correct is not None:
            doc["correct"] = self.correct
        doc.update(
            items_scored=self.items_scored,
            tokens=self.tokens,
            seconds=round(self.seconds, 3),
            tokens_per_second=self.tokens_per_second,
        )
        return doc


@dataclass(frozen=True)
class EvalSetup:
    base: str
    device: str
    dtype: str
    threads: int
    load_in_4bit: bool


@dataclass(frozen=True)
class EvalSettings:
    max_new_tokens: int
    batch_size: int
    stop: list[str]
    few_shot: str | None
    few_shot_chars: int
    chat_template: bool
    tolerance: float
    timeout: float
    max_length: int
    limit: int | None
    seed: int


@dataclass
class EvalReport:
    version: str
    data: str
    sha256: str
    items: int
    metric: str
    setup: EvalSetup
    settings: EvalSettings
    models: list[ModelScore]

    def to_json(self) -> dict[str, Any]:
        return {
            "loramix": self.version,
            "command": "eval",
            "data": self.data,
            "sha256": self.sha256,
            "items": self.items,
            "metric": self.metric,
            **asdict(self.setup),
            "settings": asdict(self.settings),
            "models": [m.to_json() for m in self.models],
        }
