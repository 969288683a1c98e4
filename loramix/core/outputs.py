"""Atomic outputs: written beside `--out` and renamed into place only when complete.

A new output is renamed onto a path that must not exist (renameat2 RENAME_NOREPLACE where the
kernel has it), so two runs racing for one --out cannot both win: the second fails. `--force`
swaps the finished folder with the old one in one step (RENAME_EXCHANGE) and then deletes the old;
where the exchange is not available, the old folder is first moved to `.NAME.old-PID-ID` and a later
run (or reader) puts it back if the process died in between (`recover`). Temporary folders carry
their writer's process id, and a later run removes those whose writer is gone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from loramix.core.errors import InputError, LoramixError

_NOREPLACE, _EXCHANGE = 1, 2  # renameat2 flags (linux/fs.h)
_AT_FDCWD = -100


def check_out(out: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse an `out` that is, holds or lies inside an input; an existing `out` without `force`;
    a file; or a place that cannot be created."""
    recover(out)
    refuse_inputs(out, inputs, "--out")
    _refuse_file_above(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is a file; --out must name a folder")
    if out.exists() and not force:
        raise InputError(f"{out}: already exists", hint="pass --force to replace it")
    _check_writable(out)


def refuse_inputs(out: Path, inputs: Iterable[Path], option: str) -> None:
    """Refuse an output that is an input, holds one (replacing it would delete it) or lies inside
    one (writing there would change it). Paths are compared with symbolic links followed."""
    resolved = _resolve(out)
    for given in inputs:
        p = _resolve(Path(given))
        if p == resolved:
            raise InputError(f"{out}: is also an input ({given}); write the result somewhere else")
        if p.is_relative_to(resolved):
            raise InputError(
                f"{out}: holds the input {given}; replacing it would delete that input",
                hint=f"give {option} a path outside every input",
            )
        if resolved.is_relative_to(p) and p.is_dir():
            raise InputError(
                f"{out}: lies inside the input {given}; writing there would change it",
                hint=f"give {option} a path outside every input",
            )


def _resolve(path: Path) -> Path:
    try:
        return path.expanduser().resolve(strict=False)
    except RuntimeError:  # a symlink loop (Python < 3.13 raises this)
        raise InputError(f"{path}: is a symbolic link that loops")
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{path}: is a symbolic link that loops")
        raise


def _refuse_file_above(out: Path) -> None:
    """`out` can be created only if its nearest existing ancestor is a folder."""
    above = out.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise InputError(f"{out}: cannot be created, {above} is a file")


def _check_writable(out: Path) -> None:
    """Fail now, not after hours of training, where `out` cannot be written: a file is made and
    removed in its nearest existing folder (root passes permission checks, not a read-only disk)."""
    import tempfile

    above = out.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    try:
        with tempfile.TemporaryFile(dir=above, prefix=f".{out.name}.probe-"):
            pass
    except OSError as e:
        raise InputError(f"{out}: cannot be written in {above} ({e.strerror or e})", hint="choose another place for it")


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it takes `out`'s place in one
    rename. On any failure (an exception, Ctrl-C) the temporary folder and any parent folders made
    for it are removed, and `out` is untouched."""
    out = Path(out)
    check_out(out, force)
    made = [p for p in out.parents if not p.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    tmp = _tmp_beside(out)
    tmp.mkdir()  # not tempfile.mkdtemp: its mode 0700 would become the output's
    try:
        yield tmp
        _install(out, tmp, force)
    except BaseException as e:
        _discard(out, tmp, made, e)
        raise


def write_file_atomic(out: Path, force: bool, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a temporary file beside `out`, then put it in `out`'s place in one step
    (onto a free path only, or with `force` by exchange). On any failure the temporary file and
    any parent folders made for it are removed, and `out` is untouched."""
    made = [p for p in out.parents if not p.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    tmp = _tmp_beside(out)
    try:
        write(tmp)
        _install(out, tmp, force)
    except BaseException as e:
        _discard(out, tmp, made, e)
        raise


def _tmp_beside(out: Path) -> Path:
    return out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _discard(out: Path, tmp: Path, made: list[Path], e: BaseException) -> None:
    """After a failed write: remove what it left; a full disk names the output."""
    _remove(tmp)
    _remove_empty(made)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        raise LoramixError(
            f"{out}: no space left on the device while writing it",
            hint="free some space, or write it somewhere else",
        ) from e


def _remove(path: Path) -> None:
    """A file or a folder, whichever `path` is (nothing if it is gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # no longer empty: somebody else wrote there
            return


def _install(out: Path, tmp: Path, force: bool) -> None:
    """Put `tmp` in `out`'s place: onto a free path only (without force), or by exchange."""
    if not out.exists() or not force:
        if not _rename2(tmp, out, _NOREPLACE, fallback=lambda: _rename_if_absent(tmp, out)):
            raise InputError(
                f"{out}: appeared while this run was writing it (another run?)",
                hint="pass --force to replace it, or write somewhere else",
            )
        return
    if _rename2(tmp, out, _EXCHANGE, fallback=lambda: _swap_by_renames(tmp, out)):
        _remove(tmp)  # tmp now holds the old output


def _rename2(src: Path, dst: Path, flags: int, fallback) -> bool:
    """renameat2 with `flags`; False if the destination exists (RENAME_NOREPLACE). Where the
    kernel or file system has no renameat2, `fallback()` decides."""
    call = getattr(_libc(), "renameat2", None)
    if call is not None:
        if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    return fallback()


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _rename_if_absent(src: Path, dst: Path) -> bool:
    if dst.exists():
        return False
    try:
        src.rename(dst)  # onto a non-empty folder this fails, so a racing run still cannot be replaced
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def _swap_by_renames(tmp: Path, out: Path) -> bool:
    """Two renames, the old output kept as .NAME.old-PID-ID until the new one is in place
    (`recover` puts it back if this process dies between them)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    _remove(old)
    return False  # tmp is gone: nothing for the caller to delete


def recover(out: Path) -> None:
    """Undo what a run killed mid-replacement left: `out` missing but `.out.old-*` present (the
    old output, moved aside) -> put it back. Then remove temporary folders of dead writers. (Of
    several processes of one run, the first does this.)"""
    from loramix.core import dist

    if not dist.is_main():
        return
    if not out.exists() and out.parent.is_dir():
        olds = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds and not _alive(olds[-1]):
            olds[-1].rename(out)
    if out.parent.is_dir():
        _clean_stale(out)


def _clean_stale(out: Path) -> None:
    for leftover in list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f".{out.name}.old-*")):
        if not _alive(leftover):
            _remove(leftover)


def _alive(leftover: Path) -> bool:
    """Whether the process that made a .NAME.tmp-PID-ID / .old-PID-ID folder still runs (folders
    of unknown shape are left alone)."""
    parts = leftover.name.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_file(path: Path, force: bool, option: str, inputs: Iterable[Path] = ()) -> None:
    """An output file: refused if it is a folder, an input, or exists without `force`."""
    refuse_inputs(path, inputs, option)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; {option} names a file")
    if path.exists() and not force:
        raise InputError(f"{path}: already exists", hint="pass --force to replace it")
    _refuse_file_above(path)
    _check_writable(path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path` and put it in place in one step."""
    write_file_atomic(path, True, lambda tmp: tmp.write_text(text, encoding="utf-8"))
