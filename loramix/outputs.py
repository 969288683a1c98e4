"""Atomic output folders: written beside `--out` and renamed into place only when complete."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from loramix.errors import InputError


def check_out(out: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an existing `out` without `force`, a file in its place, or an input as the output."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is a file; --out must name a folder")
    if out.exists() and not force:
        raise InputError(f"{out}: already exists", hint="pass --force to replace it")
    resolved = out.resolve()
    for p in inputs:
        if Path(p).resolve() == resolved:
            raise InputError(f"{out}: is also an input; write the result somewhere else")


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it replaces `out` in one rename.

    On any failure (an exception, Ctrl-C) the temporary folder is removed and `out` is untouched.
    """
    out = Path(out)
    check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
