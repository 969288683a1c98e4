"""The error family every command raises; `cli.py` turns it into one message and an exit code."""

from __future__ import annotations

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class LoramixError(Exception):
    """A failure the user can act on: a message, an optional hint and the process exit code."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(LoramixError):
    """Bad usage or bad input (a file, a value): exit code 2."""

    exit_code = EXIT_USAGE


class AdapterError(InputError):
    """An adapter folder that cannot be read or merged exactly."""
