"""Run untrusted Python programs (model output scored by `eval --metric program`) in a sandbox.

Threat model: a language model wrote the program; it may loop, allocate without bound, fork, print
without end, read secrets (environment, files, the parent's /proc entries), write or delete files
or open connections. A run must end within its limits, be scored wrong when it tries any of these
and leave nothing behind. Layers, each holding on its own where it can:

1. A fresh `python -I -S -B` (no PYTHON* variables, no site-packages, no .pyc writes), started
   without `preexec_fn` (no fork of a caller holding a model and threads) in its own session; cwd =
   HOME = TMPDIR = an empty `mkdtemp()` folder; stdin /dev/null; no inherited fds; the environment
   is only PATH, LANG, HOME, TMPDIR (no secret of the caller's).
2. A trusted bootstrap, before the program is read, sets kernel limits from argv, soft and hard (so
   never raised again): RLIMIT_CPU, AS (memory), FSIZE (1 MB a file), NOFILE, CORE 0, NPROC (the
   real uid's tasks, checked at fork: 1 forbids any fork or thread; root is exempt, hence 3; left
   alone with `processes > 0` for a normal user). It removes the calls without an audit event
   (UNAUDITED: mknod, mkfifo, setsid, setpgid, pidfd_send_signal...) from os, posix and _signal,
   imports every built-in module and deletes `_imp.create_builtin` (a fresh posix would have them),
   and sets `sys.pycache_prefix` to /dev/null: imports compile from source (marshal is refused).
3. As root, it drops to nobody (setgroups, setgid, setuid; setuid(0) must then fail) after opening
   the standard library folders as /proc/self/fd/N (nobody may not reach /root, 0700). The folder
   is chowned to nobody. The OS then forbids writing what root owns, reading root's files and
   /proc/<parent>/environ, signalling the caller; NPROC applies (shared by all runs).
4. An audit hook (PEP 578): writes, renames, deletes, chmod... only in the folder, at most 16 files
   or folders created or opened for writing; reads and listings only there and in the standard
   library; no fork, exec, spawn, system, subprocess, signals, sockets, ctypes, mmap, sqlite,
   setrlimit, code objects (`code.__new__`, `marshal.load*`), tracing, other audit hooks, extension
   modules from elsewhere (a /proc/self/fd/N replaced by the program included) or test ones under
   any name. A refusal ends the process at once, exit 86, "refused: <event>": no `except` catches
   it (an exception raised inside the hook, by a signal handler say, fails the call instead). The
   hook runs no program code (it looks only at objects of exact builtin types, refuses others) and
   reads no global: its state is in default arguments, immutable (tuples, str, a mapping proxy, an
   `itertools.count` that only goes up), so a program that reaches its frames (a finalizer or a
   signal handler run inside it, then `sys._getframe`) changes nothing.
5. The parent: a wall-clock deadline; stdout and stderr read as they come, each capped at
   `output_bytes`; the whole process group is killed (SIGKILL) before the leader is reaped; the
   folder is removed whatever happened.

Not protected: metadata anywhere (os.stat, os.access: existence checks raise no audit event).
Audit hooks are not a security boundary on their own (PEP 578): a flaw in the interpreter or a C
function without an event gives the program all the rights of its uid: nobody's as root (3), the
caller's own otherwise, whose files then only 1, 2, 4 and 5 protect. With `processes > 0` each
process counts its own files.
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
FILE_BYTES = 1024 * 1024  # RLIMIT_FSIZE: the largest file a program may write in its folder
OPEN_FILES = 64
CREATED_FILES = 16  # files or folders a program may create or open for writing
BAD_MODULES = ("ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "mmap", "_sqlite3", "_dbm", "_gdbm",
               "readline", "_curses", "_tkinter", "_posixshmem", "_multiprocessing")  # (named semaphores)
BAD_PREFIXES = ("_test", "_ctypes", "_xx")  # _testcapi, _testinternalcapi, _ctypes_test, _xxsubinterpreters
UNAUDITED = ("mknod", "mkfifo", "memfd_create", "setsid", "setpgid", "setpgrp", "login_tty",
             "pidfd_open", "pidfd_send_signal")  # removed from os, posix and _signal

# Every function reads only its arguments: what it needs is bound as a default at definition time,
# immutable, so that nothing in the hook's globals (which a program could reach) matters.
_HOOK = r'''
from itertools import count
from os import write, _exit, access, readlink
DENY = ("os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system", "os.kill", "os.putenv",
        "os.unsetenv", "os.chdir", "os.link", "os.symlink", "os.startfile", "pty.", "subprocess.",
        "socket.", "ctypes.", "mmap.", "resource.", "signal.pthread_kill", "fcntl.ioctl", "syslog.",
        "sqlite3.", "gc.get_", "code.__new__", "marshal.load", "sys.settrace", "sys.setprofile",
        "sys._current_frames", "sys.addaudithook", "webbrowser.") + FORK
PATHS = type(type.__dict__)({  # event: (paths, dir_fds), indices into its arguments
    "os.mkdir": ((0,), (2,)), "os.rmdir": ((0,), (1,)), "os.remove": ((0,), (1,)),
    "os.rename": ((0, 1), (2, 3)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
    "os.utime": ((0,), (3,)), "os.truncate": ((0,), ()), "os.chflags": ((0,), ()),
    "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), (1,))})

def _inside(path, roots, folder=FOLDER, type=type, str=str, bytes=bytes):
    if type(path) is bytes:  # lexical: no "..", no symlink can be made; exact str or bytes only
        path = path.decode("utf-8", "surrogateescape")
    if type(path) is not str or ".." in path.split("/"):
        return False
    path = path if path.startswith("/") else folder + "/" + path  # the cwd never changes
    for root in roots:
        if path == root or path.startswith(root + "/"):
            return True
    return False

def _show(value, type=type, repr=repr, str=str, bytes=bytes, int=int):
    return repr(value) if type(value) is str or type(value) is bytes or type(value) is int else "?"

def _open_ok(path, writing, inside=_inside, access=access, type=type, int=int, bytes=bytes,
             here=(FOLDER,), read_roots=READ_ROOTS):
    if type(path) is int or inside(path, here):
        return True
    if writing or not inside(path, read_roots):
        return False  # no directory fd outside the folder (os.open's dir_fd is not in the event);
    return not access(path + (b"/" if type(path) is bytes else "/"), 0)  # no try: nothing to inject

def _dir_fd_ok(fd, inside=_inside, readlink=readlink, type=type, int=int, here=(FOLDER,)):
    return fd is None or type(fd) is int and (fd == -1 or inside(readlink("/proc/self/fd/%d" % fd), here))

def _lib_ok(path, inside=_inside, readlink=readlink, lib_roots=LIB_ROOTS, lib_fds=LIB_FDS):
    if not inside(path, lib_roots):
        return False
    for fd_path, target in lib_fds:  # the program may have put its own folder there (dup2)
        if readlink(fd_path) != target:
            return False
    return True

def _why_paths(event, args, paths, inside=_inside, show=_show, open_ok=_open_ok, dir_fd_ok=_dir_fd_ok,
               created=count(), most=CREATED, next=next, here=(FOLDER,), type=type, int=int, str=str,
               write=WRITE):
    if event == "open":  # (path, mode: str for open() and C's fopen, None for os.open; flags)
        path, mode, flags = args[0], args[1], args[2]
        if type(flags) is not int or mode is not None and type(mode) is not str:
            return "open " + show(path)
        writing = flags & write or mode is not None and ("w" in mode or "a" in mode or "x" in mode
                                                         or "+" in mode)  # fopen: flags 0
        if not open_ok(path, writing):
            return "open " + show(path)
        if writing and type(path) is not int and next(created) >= most:
            return "open: more than %d files created or written" % most
        return None
    for i in paths[0]:
        if not inside(args[i], here):
            return event + " " + show(args[i])
    for i in paths[1]:
        if not dir_fd_ok(args[i]):
            return event + " with dir_fd"
    if event == "os.mkdir" and next(created) >= most:
        return "os.mkdir: more than %d files created or written" % most
    return None

def _why(event, args, deny=DENY, table=PATHS, why_paths=_why_paths, inside=_inside, show=_show,
         lib_ok=_lib_ok, read_roots=READ_ROOTS, bad=BAD_MODULES, bad_prefixes=BAD_PREFIXES,
         no_paths=((), ()), type=type, str=str, int=int):
    if event.startswith(deny):
        return event
    paths = table.get(event, no_paths)
    if event == "open" or paths is not no_paths:
        return why_paths(event, args, paths)
    if event == "os.listdir" or event == "os.scandir":
        path = args[0]
        ok = path is None or type(path) is int or inside(path, read_roots)
        return None if ok else event + " " + show(path)
    if event == "import":
        name, where = args[0], args[1]
        if type(name) is not str or where is not None and not lib_ok(where):
            return "import " + show(name)
        for part in name.split("."):  # create_dynamic loads PyInit_<last part> under any name
            if part in bad or part.startswith(bad_prefixes):
                return "import " + show(name)
    if event == "object.__setattr__":
        name = args[1]
        if type(name) is not str or name in ("__code__", "__defaults__", "__kwdefaults__"):
            return event + " " + show(name)
    return None

def _hook(event, args, why=_why, error=BaseException, write=write, exit=_exit, refused=REFUSED):
    try:
        reason = why(event, args)
    except error:
        reason = event + " (unreadable arguments)"
    if reason is not None:  # end the process: a refusal cannot be caught
        write(2, ("\nloramix-sandbox refused: " + reason[:200] + "\n").encode("utf-8", "replace"))
        exit(refused)
'''

_BOOTSTRAP = r'''
import builtins, os, posix, resource, sys, _imp, _signal
folder, uid, gid, processes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for limit in sys.argv[5:]:  # first of all, soft and hard: "which,soft,hard"
    which, soft, hard = map(int, limit.split(","))
    resource.setrlimit(which, (soft, hard))
with open(folder + "/program.py", encoding="utf-8") as f:
    source = f.read()
for name in sys.builtin_module_names:  # all of them now: no fresh posix can bring back UNAUDITED
    if name not in BAD_MODULES and not name.startswith(BAD_PREFIXES):
        __import__(name)
del _imp.create_builtin
for module, name in [(m, n) for m in (os, posix, _signal) for n in UNAUDITED]:
    vars(module).pop(name, None)
os.__all__[:] = [n for n in os.__all__ if n not in UNAUDITED]
lib, lib_fds = [p for p in sys.path if os.path.exists(p)], ()
if uid >= 0:  # nobody may not reach the interpreter's folders: keep them open, as /proc/self/fd/N
    fds = {p: "/proc/self/fd/%d" % os.open(p, os.O_RDONLY) for p in lib}
    lib_fds = tuple((v, os.readlink(v)) for v in fds.values())
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
sys.pycache_prefix = "/dev/null"  # no .pyc can be there: imports compile from source (no marshal)
exec(HOOK + "\n_add(_hook)", {
    "__builtins__": dict(vars(builtins)), "_add": sys.addaudithook, "FOLDER": folder,
    "LIB_ROOTS": libs, "LIB_FDS": lib_fds, "READ_ROOTS": libs + (folder, "/dev/null", "/dev/urandom"),
    "FORK": ("os.fork",) if processes == 0 else (), "REFUSED": EXIT_REFUSED, "CREATED": CREATED_FILES,
    "BAD_MODULES": BAD_MODULES, "BAD_PREFIXES": BAD_PREFIXES,
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

BOOTSTRAP = "HOOK, EXIT_REFUSED, CREATED_FILES, BAD_MODULES, BAD_PREFIXES, UNAUDITED = %r\n%s" % (
    (_HOOK, EXIT_REFUSED, CREATED_FILES, BAD_MODULES, BAD_PREFIXES, UNAUDITED), _BOOTSTRAP)


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
    wanted = {resource.RLIMIT_CPU: (limits.cpu_seconds, limits.cpu_seconds + 1),
              resource.RLIMIT_AS: (limits.memory_mb * 1024 * 1024,) * 2,
              resource.RLIMIT_FSIZE: (FILE_BYTES,) * 2, resource.RLIMIT_NOFILE: (OPEN_FILES,) * 2,
              resource.RLIMIT_CORE: (0, 0)}
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
    argv = [sys.executable, "-I", "-S", "-B", "-c", BOOTSTRAP, folder, str(uid), str(gid),
            str(limits.processes), *_limit_args(limits, uid >= 0)]
    return subprocess.Popen(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL,  # no preexec_fn:
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,  # no fork
                            start_new_session=True)


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
