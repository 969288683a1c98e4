"""Run untrusted Python programs (model output scored by `eval --metric program`) in a sandbox.

Threat model: a language model wrote the program; it may loop, allocate without bound, fork, print
without end, read secrets (environment, files, the parent's /proc entries), write or delete files
or open connections. A run must end within its limits, be scored wrong when it tries any of these
and leave nothing behind. Layers, each holding on its own where it can:

1. A fresh `python -I -S -B` (no PYTHON* variables, no site-packages, no .pyc writes), started
   without `preexec_fn` (no fork of a caller holding a model and threads) in its own session; cwd =
   HOME = TMPDIR = an empty folder of a random name inside a `mkdtemp()` one that others may pass
   but not list (0711: a parallel run cannot find it by listing); stdin /dev/null; no inherited fds;
   the environment is only PATH, LANG, HOME, TMPDIR (no secret of the caller's).
2. A trusted bootstrap, before the program is read, sets kernel limits from argv, soft and hard (so
   never raised again): RLIMIT_CPU, AS (memory), FSIZE (1 MB a file), NOFILE, CORE 0, NPROC (the
   real uid's tasks, checked at fork: 1 forbids any fork or thread; root is exempt, hence 3; left
   alone with `processes > 0` for a normal user). It removes the calls without an audit event
   (UNAUDITED: mknod, mkfifo, setsid, setpgid, pidfd_send_signal...) from os, posix and _signal,
   imports every built-in module and deletes `_imp.create_builtin` (a fresh posix would have them),
   and sets `sys.pycache_prefix` to /dev/null: imports compile from source (marshal is refused).
   Others it replaces, wherever a module holds them, by stand-ins raising an event the hook refuses
   (REPLACED): signal handlers and what calls them (signal.signal, setitimer, alarm, set_wakeup_fd,
   raise_signal, pthread_kill...: a handler runs program code anywhere, inside the hook too),
   readlink (/proc/<pid>/cwd names another run's folder), the user and group databases (pwd, grp,
   os.getgrouplist: the C library reads /etc/passwd and /etc/group, no open event); importing their
   modules again is refused.
3. As root, it drops to nobody (setgroups, setgid, setuid; setuid(0) must then fail) after opening
   the standard library folders as /proc/self/fd/N (nobody may not reach /root, 0700). The folder
   is chowned to nobody. The OS then forbids writing what root owns, reading root's files and
   /proc/<parent>/environ, signalling the caller; NPROC applies (shared by all runs). The uid change
   leaves the process not dumpable (fs.suid_dumpable 0 or 2): the kernel closes its /proc/<pid>
   links and files (cwd, root, fd, environ...) to the other runs, and the caller's to it.
4. An audit hook (PEP 578): writes, renames, deletes, chmod... only in the folder, at most 16 files
   or folders created or opened for writing; reads and listings only there and in the standard
   library; no fork, exec, spawn, system, subprocess, signals, sockets, ctypes, mmap, sqlite,
   setrlimit, code objects (`code.__new__`, `marshal.load*`), tracing, other audit hooks, extension
   modules from elsewhere (a /proc/self/fd/N replaced by the program included) or test ones under
   any name. A refusal ends the process at once, exit 86, "refused: <event>": no `except` catches
   it (an exception raised inside the hook, by a finalizer say, fails the call instead). The hook
   runs no program code (it looks only at objects of exact builtin types, refuses others) and reads
   no global: its state is in default arguments, immutable and handing out nothing mutable when
   compared or called (tuples of str and int, builtins, an `itertools.count` that only goes up; never
   a mapping proxy, whose == gives its dict to the other side's __eq__), so a program that reaches
   its frames (a finalizer run inside it by the collector, then `sys._getframe`) changes nothing.
   It holds no function the program lacks (a directory fd is checked by stat, up its parents).
5. The parent: a wall-clock deadline; stdout and stderr read as they come, each capped at
   `output_bytes`; the whole process group is killed (SIGKILL) before the leader is reaped; the
   folder is removed whatever happened.

Not protected: metadata anywhere (os.stat, os.access, os.getxattr: existence, sizes and times
raise no audit event; as a normal user this includes /proc/<pid>/cwd/... of the caller's other
processes and of parallel runs, though never a name: listing and readlink are refused). Audit
hooks are not a security boundary on their own (PEP 578): a flaw in the interpreter or a C function
without an event gives the program all the rights of its uid: nobody's as root (3), shared by the
parallel runs, whose folders then only their unlisted parents and closed /proc links hide; the
caller's own otherwise, whose files (and the parallel runs') then only 1, 2, 4 and 5 protect. With
`processes > 0` each process counts its own files.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from loramix.evaluate.sandbox_child import BOOTSTRAP, EXIT_REFUSED

PREFIX = "loramix-sandbox-"
FILE_BYTES = 1024 * 1024  # RLIMIT_FSIZE: the largest file a program may write in its folder
OPEN_FILES = 64


@dataclass(frozen=True)
class Limits:
    timeout: float = 5.0  # wall-clock seconds, from start to the end of the run
    cpu_seconds: int = 5
    memory_mb: int = 512  # address space (RLIMIT_AS)
    output_bytes: int = 65536  # stdout, and stderr, each
    processes: int = 0  # extra processes allowed (fork only; never exec)


@dataclass(frozen=True)
class ProgramResult:
    output: str  # stdout, decoded, at most output_bytes
    ok: bool  # exited 0 within its limits
    error: str | None  # "timeout", "cpu time", "memory", "output too large", "refused: ...", ...
    seconds: float


def _limit_args(limits: Limits, as_root: bool) -> list[str]:
    """Kernel limits for the bootstrap to set first, soft and hard: "which,soft,hard" each."""
    wanted = {
        resource.RLIMIT_CPU: (limits.cpu_seconds, limits.cpu_seconds + 1),
        resource.RLIMIT_AS: (limits.memory_mb * 1024 * 1024,) * 2,
        resource.RLIMIT_FSIZE: (FILE_BYTES,) * 2,
        resource.RLIMIT_NOFILE: (OPEN_FILES,) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    if as_root or limits.processes == 0:
        wanted[resource.RLIMIT_NPROC] = (limits.processes + 1,) * 2
    args = []
    for which, pair in wanted.items():
        hard = resource.getrlimit(which)[1]  # the child's too: never ask above it
        soft, top = (v if hard == resource.RLIM_INFINITY else min(v, hard) for v in pair)
        args.append(f"{which},{soft},{top}")
    return args


def _start(folder: str, code: str, limits: Limits) -> subprocess.Popen:
    with open(os.path.join(folder, "program.py"), "w", encoding="utf-8", errors="replace") as f:
        f.write(code)
    uid = gid = -1
    if os.geteuid() == 0:
        try:
            uid, gid = pwd.getpwnam("nobody")[2:4]
        except KeyError:
            uid, gid = 65534, 65534
        os.chown(folder, uid, gid)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": folder, "TMPDIR": folder}
    argv = [
        sys.executable,
        "-I",
        "-S",
        "-B",
        "-c",
        BOOTSTRAP,
        folder,
        str(uid),
        str(gid),
        str(limits.processes),
        *_limit_args(limits, uid >= 0),
    ]
    return subprocess.Popen(
        argv,
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,  # no preexec_fn:
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,  # no fork
        start_new_session=True,
    )


def _collect(proc: subprocess.Popen, limits: Limits, deadline: float) -> tuple[bytes, bytes, str | None]:
    """Read stdout and stderr until both close, the deadline passes or one grows too large."""
    out, err, reason = bytearray(), bytearray(), None
    with selectors.DefaultSelector() as sel:
        assert proc.stdout is not None and proc.stderr is not None  # both are pipes (_start)
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map() and reason is None:
            left = deadline - time.monotonic()
            if left <= 0:
                reason = "timeout"
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                key.data.extend(chunk)
                if len(key.data) > limits.output_bytes:
                    reason = "output too large"
    while reason is None and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:
            reason = "timeout"
        time.sleep(0.005)
    return bytes(out), bytes(err), reason


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


_SIGNALS: dict[int, str] = {signal.SIGXCPU: "cpu time", signal.SIGKILL: "cpu time", signal.SIGXFSZ: "file too large"}


def _explain(returncode: int, err: bytes) -> str | None:
    if returncode == 0:
        return None
    lines = err.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1].strip() if lines else ""
    mark = "loramix-sandbox refused: "
    if returncode == EXIT_REFUSED and last.startswith(mark):
        return "refused: " + last[len(mark) :]
    if returncode < 0:
        return _SIGNALS.get(-returncode, f"killed by signal {-returncode}")
    if last.startswith("MemoryError"):
        return "memory"
    return last[:200] if returncode == 1 and last else f"exit code {returncode}"


def _remove(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    if os.path.lexists(folder):  # a normal user's program may leave unreadable folders: reopen them
        for root, dirs, _ in os.walk(folder):
            for name in dirs:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), 0o700)
        shutil.rmtree(folder, ignore_errors=True)


def run_program(code: str, limits: Limits = Limits()) -> ProgramResult:
    """Run one program in the sandbox; what it prints (or `solution()`'s value) is `output`."""
    start = time.monotonic()
    outer = os.path.realpath(tempfile.mkdtemp(prefix=PREFIX))
    try:
        os.chmod(outer, 0o711)  # passed through, not listed: only this run knows its folder's name
        folder = tempfile.mkdtemp(dir=outer)
        with _start(folder, code, limits) as proc:  # on leaving: pipes closed, the leader reaped
            try:
                out, err, reason = _collect(proc, limits, start + limits.timeout)
            finally:
                _kill_group(proc.pid)  # the leader is not reaped yet: its group id is still its own
    finally:
        _remove(outer)
    error = reason or _explain(proc.returncode, err)
    output = out[: limits.output_bytes].decode("utf-8", "replace")
    return ProgramResult(output, error is None, error, time.monotonic() - start)


def run_programs(codes: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[ProgramResult]:
    """Run programs in parallel (one waiting thread per running process), results in input order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(codes) or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda code: run_program(code, limits), codes))
