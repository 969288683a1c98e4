"""The models `eval` scores: one base with every adapter loaded as a named PEFT adapter, switched
in place (the base row runs with every adapter disabled); a routed mixture (core/routing.py) is
scored with every PEFT adapter off and its routed deltas hooked onto the base's linears."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramix.evaluate.report import EvalSetup


@dataclass
class ModelSet:
    """One base model with k adapters loaded as named PEFT adapters ("a0", "a1", ...)."""

    model: Any
    tokenizer: Any
    setup: EvalSetup
    names: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    with_base: bool = True
    peft_names: dict[Path, str] = field(default_factory=dict)  # a plain adapter's path -> its PEFT name
    routed: dict[Path, dict] = field(default_factory=dict)  # a mixture's path -> {module: RoutedDelta}

    @property
    def device(self) -> str:
        return self.setup.device

    def entries(self) -> list[tuple[str, Path | None]]:
        return ([("base", None)] if self.with_base else []) + list(zip(self.names, self.paths))

    @contextmanager
    def active(self, adapter: Path | None) -> Iterator[Any]:
        """The model as it scores `adapter` (None: the base, every adapter off)."""
        from loramix.core import routing

        off = self.model.disable_adapter() if self.peft_names else nullcontext()
        if adapter is not None and adapter in self.routed:
            with off:
                handles = routing.attach(self.model, self.routed[adapter])
                try:
                    yield self.model
                finally:
                    routing.detach(handles)
        elif adapter is None:
            with off:
                yield self.model
        else:
            self.model.set_adapter(self.peft_names[adapter])
            yield self.model


def load_models(c, adapters: list, base: str, path: Path, tokenizer, names: list[str]) -> ModelSet:
    """The base and every adapter on it, set for inference. `adapters` has one entry per
    --adapter: its Adapter, or a routed mixture's list of expert Adapters."""
    from loramix.core import models, routing
    from loramix.core.targets import check_adapter_shapes

    device, dtype, threads = models.setup(c.device, c.dtype, c.load_in_4bit, c.threads)
    model = models.load_model(path, dtype, device, c.load_in_4bit)
    check_adapter_shapes(model, [a for entry in adapters for a in (entry if isinstance(entry, list) else [entry])])
    peft_names: dict[Path, str] = {}
    routed: dict[Path, dict] = {}
    for i, (p, entry) in enumerate(zip(c.adapters, adapters)):
        if isinstance(entry, list):
            routed[p] = {n: d.to(device) for n, d in routing.load(p, c.base)[2].items()}
        elif not peft_names:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(entry.path), adapter_name=f"a{i}")
            peft_names[p] = f"a{i}"
        else:
            model.load_adapter(str(entry.path), adapter_name=f"a{i}")
            peft_names[p] = f"a{i}"
    inference_mode(model, c.load_in_4bit)
    setup = EvalSetup(
        base=models.base_record(base),
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        threads=threads,
        load_in_4bit=c.load_in_4bit,
    )
    return ModelSet(model, tokenizer, setup, names, list(c.adapters), c.with_base, peft_names, routed)


def inference_mode(model, load_in_4bit: bool) -> None:
    """eval() for inference; a 4-bit base stays in train mode with only dropout off, because
    bitsandbytes repacks 4-bit weights during an eval-mode CPU forward, wrongly (docs/architecture.md, 4-bit bases) or not
    at all (it fails where in_features is not a multiple of its block size, as in loramix-tiny)."""
    import torch

    if not load_in_4bit:
        model.eval()
        return
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
