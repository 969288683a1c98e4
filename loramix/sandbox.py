"""Run untrusted Python programs (model output scored by `eval --metric program`) in a sandbox.

Threat model: a language model wrote the program; it may loop, allocate without bound, fork, print
without end, read secrets (environment, files, the parent's /proc entries), write or delete files
or open connections. A run must end within its limits, be scored wrong when it tries any of these
and leave nothing behind. Layers, each holding on its own where it can:

1. A fresh `python -I -S -B` (no PYTHON* variables, no site-packages, no .pyc writes) in its own
   session, cwd = HOME = TMPDIR = an empty `tempfile.mkdtemp()` folder; stdin /dev/null; no
   inherited fds; the environment is only PATH, LANG, HOME, TMPDIR (no secret of the caller's).
2. Kernel limits set in `preexec_fn` before exec: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE,
   RLIMIT_NOFILE, RLIMIT_CORE 0, RLIMIT_NPROC. NPROC counts all tasks of the real uid and is
   checked at fork, so 1 forbids any fork or thread, for a normal user too; root is exempt (hence
   3). With `processes > 0` and a normal user it is left alone (a per-user count would be racy).
3. As root, the bootstrap (trusted, run before the program is even compiled) drops to nobody
   (setgroups, setgid, setuid; setuid(0) must then fail) after opening the standard library
   folders as /proc/self/fd/N, as nobody may not reach the interpreter (here under /root, 0700).
   The folder is chowned to nobody. The OS then forbids writing what root owns, reading root's
   files and /proc/<parent>/environ, signalling the caller; NPROC applies (shared by all runs).
4. An audit hook (PEP 578), unreachable from the program (private globals and builtins, no name
   left bound to it): writes, renames, deletes, chmod... only in the folder; reads only there and
   in the standard library; no fork, exec, spawn, system, subprocess, signals, sockets, ctypes,
   mmap, sqlite, setrlimit, code objects, extension modules from elsewhere. A refusal ends the
   process at once (no `except` can catch it): exit 86, "refused: <event>". Audit hooks alone are
   not a security boundary (PEP 578); they close what the OS allows to the caller's own uid.
5. The parent: a wall-clock deadline; stdout and stderr read as they come, each capped at
   `output_bytes`; the whole process group is killed (SIGKILL) before the leader is reaped; the
   folder is removed whatever happened.
"""

from __future__ import annotations

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

PREFIX = "loramix-sandbox-"
EXIT_REFUSED = 86
FILE_BYTES = 8 * 1024 * 1024  # RLIMIT_FSIZE: the largest file a program may write in its folder
OPEN_FILES = 64

_HOOK = r'''
from os import write as _write, _exit as _exit, stat as _stat, readlink as _readlink
DENY = ("os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system", "os.kill", "os.putenv",
        "os.unsetenv", "os.chdir", "os.link", "os.symlink", "os.mknod", "os.startfile", "pty.",
        "subprocess.", "socket.", "ctypes.", "mmap.", "resource.", "signal.pthread_kill",
        "fcntl.ioctl", "syslog.", "sqlite3.", "gc.get_", "code.__new__", "webbrowser.") + FORK
BAD_MODULES = ("ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "_testcapi", "mmap",
               "_testinternalcapi", "_xxsubinterpreters", "_sqlite3", "_dbm", "_gdbm", "readline",
               "_curses", "_tkinter", "_posixshmem")
PATHS = {"os.mkdir": ((0,), (2,)), "os.rmdir": ((0,), (1,)), "os.remove": ((0,), (1,)),  # event:
         "os.rename": ((0, 1), (2, 3)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),  # (paths,
         "os.utime": ((0,), (3,)), "os.truncate": ((0,), ()), "os.chflags": ((0,), ()),  # dir_fds)
         "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), (1,))}

def _inside(path, roots):  # lexical: no "..", no symlink can be made; exact str only
    if type(path) is bytes:
        path = path.decode("utf-8", "surrogateescape")
    if type(path) is not str or ".." in path.split("/"):
        return False
    path = path if path.startswith("/") else FOLDER + "/" + path  # the cwd never changes
    for root in roots:
        if path == root or path.startswith(root + "/"):
            return True
    return False

def _open_ok(path, flags):
    if type(path) is int or _inside(path, (FOLDER,)):
        return True
    if type(flags) is not int or flags & WRITE or not _inside(path, READ_ROOTS):
        return False
    try:  # no directory fd outside the folder: os.open's dir_fd is not in the event
        return _stat(path).st_mode & 0o170000 != 0o040000
    except OSError:
        return True

def _why(event, args):
    if event.startswith(DENY):
        return event
    if event == "open" and not _open_ok(args[0], args[2]):
        return "open " + _show(args[0])
    for i in PATHS.get(event, ((), ()))[0]:
        if not _inside(args[i], (FOLDER,)):
            return event + " " + _show(args[i])
    for i in PATHS.get(event, ((), ()))[1]:
        if args[i] not in (-1, None) and not _inside(_readlink("/proc/self/fd/%d" % args[i]), (FOLDER,)):
            return event + " with dir_fd"
    if event in ("os.listdir", "os.scandir") and type(args[0]) in (str, bytes):
        return None if _inside(args[0], READ_ROOTS) else event + " " + _show(args[0])
    if event == "import" and (type(args[0]) is not str or args[0].partition(".")[0] in BAD_MODULES
                              or args[1] is not None and not _inside(args[1], LIB_ROOTS)):
        return "import " + _show(args[0])
    if event == "object.__setattr__" and args[1] in ("__code__", "__defaults__", "__kwdefaults__"):
        return event + " " + args[1]
    return None

def _show(value):
    return repr(value) if type(value) in (str, bytes, int) else "?"

def _hook(event, args):
    try:
        why = _why(event, args)
    except BaseException:
        why = event + " (unreadable arguments)"
    if why is not None:  # end the process: a refusal cannot be caught
        _write(2, ("\nloramix-sandbox refused: " + why[:200] + "\n").encode("utf-8", "replace"))
        _exit(REFUSED)
'''

_BOOTSTRAP = r'''
import builtins, os, sys
folder, uid, gid, processes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(folder + "/program.py", encoding="utf-8") as f:
    source = f.read()
lib = [p for p in sys.path if os.path.exists(p)]
if uid >= 0:  # nobody may not reach the interpreter's folders: keep them open, as /proc/self/fd/N
    fds = {p: "/proc/self/fd/%d" % os.open(p, os.O_RDONLY) for p in lib}
    for m in [m for m in sys.modules.values() if isinstance(getattr(m, "__path__", None), list)]:
        m.__path__[:] = [next((v + q[len(k):] for k, v in fds.items() if q.startswith(k + "/")), q)
                         for q in m.__path__]
    lib = list(fds.values())
    os.setgroups([]); os.setgid(gid); os.setuid(uid)
    try:
        os.setuid(0)
        sys.exit("loramix-sandbox: could not drop root")
    except PermissionError:
        pass
libs, sys.path[:] = tuple(lib + sys.path), lib
sys.path_importer_cache.clear()
exec(HOOK + "\n_add(_hook)", {
    "__builtins__": dict(vars(builtins)), "_add": sys.addaudithook, "FOLDER": folder,
    "LIB_ROOTS": libs, "READ_ROOTS": libs + (folder, "/dev/null", "/dev/urandom"),
    "FORK": ("os.fork",) if processes == 0 else (), "REFUSED": EXIT_REFUSED,
    "WRITE": os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND})

class Out:  # was anything printed? If not, print solution()'s value
    def __init__(self, stream):
        self.stream, self.used = stream, False
    def write(self, text):
        self.used = self.used or bool(text)
        return self.stream.write(text)
    def __getattr__(self, name):
        return getattr(self.stream, name)

sys.stdout = out = Out(sys.stdout)
namespace = {"__name__": "__main__"}
exec(compile(source, "program.py", "exec"), namespace)
if not out.used and callable(namespace.get("solution")):
    print(namespace["solution"]())
'''

BOOTSTRAP = _BOOTSTRAP.replace("HOOK +", repr(_HOOK) + " +").replace("EXIT_REFUSED", str(EXIT_REFUSED))


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


def _limiter(limits: Limits, as_root: bool):
    """The preexec_fn: kernel limits, computed here so that the child only calls setrlimit."""
    wanted = {resource.RLIMIT_CPU: (limits.cpu_seconds, limits.cpu_seconds + 1),
              resource.RLIMIT_AS: (limits.memory_mb * 1024 * 1024,) * 2,
              resource.RLIMIT_FSIZE: (FILE_BYTES,) * 2, resource.RLIMIT_NOFILE: (OPEN_FILES,) * 2,
              resource.RLIMIT_CORE: (0, 0)}
    if as_root or limits.processes == 0:
        wanted[resource.RLIMIT_NPROC] = (limits.processes + 1,) * 2
    hard = {which: resource.getrlimit(which)[1] for which in wanted}  # never ask above the hard limit
    settings = [(which, tuple(v if hard[which] == resource.RLIM_INFINITY else min(v, hard[which])
                              for v in pair)) for which, pair in wanted.items()]

    def apply() -> None:
        for which, value in settings:
            resource.setrlimit(which, value)

    return apply


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
    argv = [sys.executable, "-I", "-S", "-B", "-c", BOOTSTRAP, folder, str(uid), str(gid),
            str(limits.processes)]
    return subprocess.Popen(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                            start_new_session=True, preexec_fn=_limiter(limits, uid >= 0))


def _collect(proc: subprocess.Popen, limits: Limits, deadline: float) -> tuple[bytes, bytes, str | None]:
    """Read stdout and stderr until both close, the deadline passes or one grows too large."""
    out, err, reason = bytearray(), bytearray(), None
    with selectors.DefaultSelector() as sel:
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
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_SIGNALS = {signal.SIGXCPU: "cpu time", signal.SIGKILL: "cpu time", signal.SIGXFSZ: "file too large"}


def _explain(returncode: int, err: bytes) -> str | None:
    if returncode == 0:
        return None
    lines = err.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1].strip() if lines else ""
    mark = "loramix-sandbox refused: "
    if returncode == EXIT_REFUSED and last.startswith(mark):
        return "refused: " + last[len(mark):]
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
    folder = os.path.realpath(tempfile.mkdtemp(prefix=PREFIX))
    try:
        with _start(folder, code, limits) as proc:  # on leaving: pipes closed, the leader reaped
            try:
                out, err, reason = _collect(proc, limits, start + limits.timeout)
            finally:
                _kill_group(proc.pid)  # the leader is not reaped yet: its group id is still its own
    finally:
        _remove(folder)
    error = reason or _explain(proc.returncode, err)
    output = out[: limits.output_bytes].decode("utf-8", "replace")
    return ProgramResult(output, error is None, error, time.monotonic() - start)


def run_programs(codes: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[ProgramResult]:
    """Run programs in parallel (one waiting thread per running process), results in input order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(codes) or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda code: run_program(code, limits), codes))
