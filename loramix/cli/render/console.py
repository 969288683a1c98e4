"""The consoles and the messages: results on stdout, progress and messages on stderr.

Colour follows Rich's detection (off when NO_COLOR is set or the stream is not a terminal).
"""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.text import Text

from loramix.core import dist


def stdout() -> Console:
    """A console on stdout, made per call so that NO_COLOR, FORCE_COLOR and COLUMNS are read now.
    Of several processes of one run (torchrun), only the first prints results."""
    if not dist.is_main():
        return Console(file=io.StringIO())
    return Console(highlight=False, soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def print_json(doc: dict) -> None:
    if not dist.is_main():
        return
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def error(message: str, hint: str | None = None) -> None:
    console = stderr()
    console.print(Text("error: ", style="bold red") + Text(message))
    if hint:
        console.print(Text("hint: ", style="yellow") + Text(hint))


def warning(message: str) -> None:
    stderr().print(Text("warning: ", style="yellow") + Text(message))


class _LogLines(logging.Handler):
    """Prints the library's log records (loramix.core.log): warnings as "warning: ...", notes as is."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            warning(record.getMessage())
        else:
            stderr().print(record.getMessage(), highlight=False, markup=False)


def install_log_handler() -> None:
    """Route the `loramix` logger to stderr through this module (once per process)."""
    logger = logging.getLogger("loramix")
    if not any(isinstance(h, _LogLines) for h in logger.handlers):
        logger.addHandler(_LogLines())
    logger.setLevel(logging.INFO if dist.is_main() else logging.ERROR)  # the other processes would repeat it
    logger.propagate = False  # printed once, here, even if a library configures the root logger


def color_enabled(console: Console | None = None) -> bool:
    console = console or stdout()
    return console.color_system is not None and not console.no_color


def save_svg(path: Path, renderables: Sequence, title: str) -> None:
    """Render to an SVG file in colour, whatever the terminal supports."""
    rec = Console(record=True, file=io.StringIO(), force_terminal=True, color_system="truecolor", width=100)
    for r in renderables:
        rec.print(r)
    rec.save_svg(str(path), title=title)
