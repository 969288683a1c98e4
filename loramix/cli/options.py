"""Options several commands share, declared once: flag names, types, defaults, checks and help.

Each function returns the option a command puts as its parameter's default, e.g.
`json_out: bool = options.json_out()`. Choices are enums, so `--help` lists the values, a bad
value exits 2 with the valid ones named, and the completion scripts offer them.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import typer

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def json_out(what: str = "tables") -> Any:
    return typer.Option(False, "--json", help=f"Print one JSON document instead of {what}.")


def force(what: str = "--out") -> Any:
    return typer.Option(False, "--force", "-f", help=f"Replace {what} if it exists.")


def seed(purpose: str) -> Any:
    return typer.Option(0, "--seed", help=f"Seed for {purpose}.")


def threads() -> Any:
    return typer.Option(
        None,
        "--threads",
        show_default=False,
        help="CPU threads for torch [default: one per core; use 1 when other processes keep the CPU busy, see README].",
    )


def _device(value: Optional[str]) -> Optional[str]:
    if value is not None and not _DEVICE.match(value):
        raise typer.BadParameter(f"{value!r} is not auto, cpu, cuda or cuda:N")
    return value


def device() -> Any:
    return typer.Option("auto", "--device", callback=_device, help="auto, cpu, cuda or cuda:N.")


def dtype() -> Any:
    return typer.Option(
        "auto",
        "--dtype",
        case_sensitive=False,
        help="Weights' dtype [auto: float32 on a CPU, bfloat16 on a GPU that has it, else float16].",
    )


def load_in_4bit() -> Any:
    return typer.Option(False, "--load-in-4bit", help="Load the base in 4 bits (nf4, bitsandbytes; CPU or GPU).")


def fsdp() -> Any:
    return typer.Option(
        False,
        "--fsdp",
        help="Under torchrun or accelerate launch, shard the base's decoder layers across the processes "
        "(FSDP) so each holds 1/N of them, for bases that do not fit one device.",
    )


def base(default: Optional[str] = None, help: str = "Base model [default: the one the adapters record].") -> Any:
    return typer.Option(default, "--base", "-b", help=help, show_default=default is not None)


def profile() -> Any:
    return typer.Option(
        "peft",
        "--profile",
        case_sensitive=False,
        help="peft (ranks per module) or portable (uniform rank, alpha == r, for vLLM and llama.cpp).",
    )


def rank(help: str) -> Any:
    return typer.Option(None, "--rank", "-r", show_default=False, help=help)
