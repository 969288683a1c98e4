"""Atomic output folders: written beside `--out` and renamed into place only when complete."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loramix.core.errors import InputError


def check_out(out: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an input as the output (or inside it), an existing `out` without `force`, or a file."""
    _refuse_inputs(out, inputs)
    _refuse_file_above(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is a file; --out must name a folder")
    if out.exists() and not force:
        raise InputError(f"{out}: already exists", hint="pass --force to replace it")


def _refuse_inputs(out: Path, inputs: tuple[Path, ...]) -> None:
    resolved = out.resolve()
    for p in inputs:
        p = Path(p).resolve()
        if p == resolved:
            raise InputError(f"{out}: is also an input; write the result somewhere else")
        if p.is_relative_to(resolved) and out.exists():
            raise InputError(
                f"{out}: holds the input {p}; replacing it would delete that input",
                hint="write the result somewhere else",
            )


def _refuse_file_above(out: Path) -> None:
    """`out` can be created only if its nearest existing ancestor is a folder."""
    above = out.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise InputError(f"{out}: cannot be created, {above} is a file")


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it replaces `out` in one rename.

    On any failure (an exception, Ctrl-C) the temporary folder and any parent folders made for it
    are removed, and `out` is untouched.
    """
    out = Path(out)
    check_out(out, force)
    made = [p for p in out.parents if not p.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # not tempfile.mkdtemp: its mode 0700 would become the output's
    try:
        yield tmp
        _replace(out, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # no longer empty: somebody else wrote there
            return


def _replace(out: Path, tmp: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and restored if that fails."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_file(path: Path, force: bool, option: str) -> None:
    """An output file: refused if it is a folder, or exists without `force`."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; {option} names a file")
    if path.exists() and not force:
        raise InputError(f"{path}: already exists", hint="pass --force to replace it")
    _refuse_file_above(path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path` and rename it into place."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
