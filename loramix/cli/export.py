"""`loramix export-gguf`: write an adapter as llama.cpp's LoRA GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loramix.cli import options


def export_gguf(
    adapter: Path = typer.Argument(..., help="Adapter folder (PEFT layout).", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="The GGUF file to write.", show_default=False),
    base: Optional[str] = options.base(
        help="The base model's folder: its config.json gives the architecture, heads and shapes "
        "[default: the one the adapter records]."
    ),
    force: bool = options.force(),
    json_out: bool = options.json_out("a summary"),
) -> None:
    """Write an adapter as a llama.cpp LoRA GGUF (llama-cli --lora FILE, llama-cpp-python lora_path).

    Every module's scale is folded into B and all pairs share one rank (zero-padded) with
    adapter.lora.alpha equal to it, so llama.cpp applies each delta exactly as PEFT does. Llama
    bases only; other families, DoRA, modules_to_save and LoRAs on experts are refused.

    Example: loramix export-gguf math/ -o math-lora.gguf
    """
    from loramix.cli.render import console
    from loramix.cli.render.cells import fmt_num, key_value_table
    from loramix.export.gguf import GgufRequest, export_gguf

    report = export_gguf(GgufRequest(adapter=adapter, out=out, base=base, force=force))
    for message in report.warnings:
        console.warning(message)
    if json_out:
        console.print_json(report.to_json())
        return
    ranks = ", ".join(map(str, report.source_ranks))
    rows = [
        ("adapter", report.adapter),
        ("architecture", f"{report.architecture} (from {report.base_config})"),
        (
            "rank",
            f"{report.rank}, alpha {fmt_num(report.alpha)}" + (f" (adapter ranks {ranks})" if report.padded else ""),
        ),
        ("modules", f"{report.modules} ({report.reordered} q/k reordered for llama.cpp)"),
        ("out", f"{report.out} ({report.bytes:,} bytes, {report.dtype})"),
        ("time", f"{report.seconds:.2f} s"),
    ]
    console.stdout().print(key_value_table("exported", rows))
