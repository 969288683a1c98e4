"""The one channel through which the library speaks: warnings and notes go to the `loramix`
logger; the command line installs the handler that prints them (stderr, one line each). Library
users get Python's default (warnings on stderr) or attach their own handler."""

from __future__ import annotations

import logging

logger = logging.getLogger("loramix")


def warn(message: str) -> None:
    """Something the user should know about: the run goes on."""
    logger.warning(message)


def note(message: str) -> None:
    """Progress worth a line on stderr (a finished step, a score)."""
    logger.info(message)
