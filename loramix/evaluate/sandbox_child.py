"""What runs inside the sandbox's child process (loramix.evaluate.sandbox, whose docstring holds the
threat model): the audit hook (layer 4) and the bootstrap that sets the limits, drops privileges,
installs the hook and runs the program (layers 2 and 3). Both are source text, run by a fresh
`python -I -S -B -c BOOTSTRAP`; nothing here runs in loramix's own process.
"""

from __future__ import annotations

EXIT_REFUSED = 86
CREATED_FILES = 16  # files or folders a program may create or open for writing
BAD_MODULES = (
    "ctypes",
    "cffi",
    "_cffi_backend",
    "_posixsubprocess",
    "mmap",
    "_sqlite3",
    "_dbm",
    "_gdbm",
    "readline",
    "_curses",
    "_tkinter",
    "_posixshmem",
    "_multiprocessing",
)  # (named semaphores)
BAD_PREFIXES = ("_test", "_ctypes", "_xx")  # _testcapi, _testinternalcapi, _ctypes_test, _xxsubinterpreters
UNAUDITED = (
    "mknod",
    "mkfifo",
    "memfd_create",
    "setsid",
    "setpgid",
    "setpgrp",
    "login_tty",
    "pidfd_open",
    "pidfd_send_signal",
)  # removed from os, posix and _signal
# Calls without an audit event that the program may not make: (module, event, names). The bootstrap
# imports each module and replaces these functions, wherever a module holds them, by ones that raise
# the event "<event>.<name>", which the hook refuses; importing the module again is refused too.
# Signal handlers run program code anywhere, inside the hook included; timers and signals call them.
# readlink names the folder of another process (/proc/<pid>/cwd); pwd and grp read /etc/passwd and
# /etc/group through the C library.
REPLACED = (
    (
        "_signal",
        "signal",
        (
            "signal",
            "setitimer",
            "alarm",
            "set_wakeup_fd",
            "siginterrupt",
            "raise_signal",
            "pthread_kill",
            "pthread_sigmask",
        ),
    ),
    ("posix", "os", ("readlink", "getgrouplist")),
    ("pwd", "pwd", ("getpwall", "getpwnam", "getpwuid")),
    ("grp", "grp", ("getgrall", "getgrnam", "getgrgid")),
)

# Every function reads only its arguments: what it needs is bound as a default at definition time,
# immutable, so that nothing in the hook's globals (which a program could reach) matters. No default
# may hand out anything mutable either, compared or called (a mapping proxy's == passes its dict to
# the other operand's __eq__): tuples of str and int, exact builtins, functions, a count.
_HOOK = r"""
from itertools import count
from os import write, _exit, access, stat
DENY = ("os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system", "os.kill", "os.putenv",
        "os.unsetenv", "os.chdir", "os.link", "os.symlink", "os.startfile", "pty.", "subprocess.",
        "socket.", "ctypes.", "mmap.", "resource.", "fcntl.ioctl", "syslog.", "sqlite3.", "gc.get_",
        "code.__new__", "marshal.load", "sys.settrace", "sys.setprofile", "sys._current_frames",
        "sys.addaudithook", "webbrowser.") + FORK + REPLACED_EVENTS
PATHS = (  # (event, paths, dir_fds): indices into its arguments; a tuple, nothing a program could empty
    ("os.mkdir", (0,), (2,)), ("os.rmdir", (0,), (1,)), ("os.remove", (0,), (1,)),
    ("os.rename", (0, 1), (2, 3)), ("os.chmod", (0,), (2,)), ("os.chown", (0,), (3,)),
    ("os.utime", (0,), (3,)), ("os.truncate", (0,), ()), ("os.chflags", (0,), ()),
    ("os.setxattr", (0,), ()), ("os.removexattr", (0,), ()), ("shutil.rmtree", (0,), (1,)))

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

def _dir_fd_ok(fd, access=access, stat=stat, type=type, int=int, range=range, home=FOLDER_ID):
    if fd is None or type(fd) is int and fd == -1:
        return True
    if type(fd) is not int:
        return False
    path = "/proc/self/fd/%d" % fd  # up through its parents (no readlink: the program has none)
    for _ in range(64):
        if not access(path, 0):  # not a folder, or a parent it may not pass: not the sandbox's
            return False
        found = stat(path)
        if (found.st_dev, found.st_ino) == home:
            return True
        path = path + "/.."
    return False

def _lib_ok(path, inside=_inside, stat=stat, lib_roots=LIB_ROOTS, lib_fds=LIB_FDS):
    if not inside(path, lib_roots):
        return False
    for fd_path, dev, ino in lib_fds:  # the program may have put its own folder there (dup2)
        found = stat(fd_path)
        if found.st_dev != dev or found.st_ino != ino:
            return False
    return True

def _why_paths(event, args, paths, dir_fds, inside=_inside, show=_show, open_ok=_open_ok,
               dir_fd_ok=_dir_fd_ok, created=count(), most=CREATED, next=next, here=(FOLDER,), type=type,
               int=int, str=str, write=WRITE):
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
    for i in paths:
        if not inside(args[i], here):
            return event + " " + show(args[i])
    for i in dir_fds:
        if not dir_fd_ok(args[i]):
            return event + " with dir_fd"
    if event == "os.mkdir" and next(created) >= most:
        return "os.mkdir: more than %d files created or written" % most
    return None

def _why(event, args, deny=DENY, table=PATHS, why_paths=_why_paths, inside=_inside, show=_show,
         lib_ok=_lib_ok, read_roots=READ_ROOTS, bad=BAD_MODULES, bad_prefixes=BAD_PREFIXES, type=type,
         str=str, int=int):
    if event.startswith(deny):
        return event
    if event == "open":
        return why_paths(event, args, (), ())
    for name, paths, dir_fds in table:
        if name == event:
            return why_paths(event, args, paths, dir_fds)
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
"""

_BOOTSTRAP = r"""
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

def refusal(event, audit=sys.audit):  # a stand-in: the hook refuses its event, ending the program
    return lambda *args, **kwargs: audit(event)

def replace():  # REPLACED's functions, wherever a module holds them (os: posix's); none is kept
    stand_ins = {}  # id(function): (function, its stand-in)
    for module_name, event, names in REPLACED:
        try:
            module = __import__(module_name)  # grp too, while the library is reachable
        except ImportError:
            continue
        stand_ins.update((id(f), (f, refusal(event + "." + n))) for n, f in vars(module).items() if n in names)
    for module in list(sys.modules.values()):
        for name, value in list(vars(module).items()):
            if id(value) in stand_ins and stand_ins[id(value)][0] is value:
                vars(module)[name] = stand_ins[id(value)][1]

replace()
home = os.stat(folder)
lib, lib_fds = [p for p in sys.path if os.path.exists(p)], ()
if uid >= 0:  # nobody may not reach the interpreter's folders: keep them open, as /proc/self/fd/N
    fds = {p: "/proc/self/fd/%d" % os.open(p, os.O_RDONLY) for p in lib}
    lib_fds = tuple((v, s.st_dev, s.st_ino) for v in fds.values() for s in [os.stat(v)])
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
    "REPLACED_EVENTS": tuple(e + "." + n for _, e, names in REPLACED for n in names),
    "BAD_MODULES": BAD_MODULES + tuple(m for m, _, _ in REPLACED), "BAD_PREFIXES": BAD_PREFIXES,
    "FOLDER_ID": (home.st_dev, home.st_ino),
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
"""

_CONSTANTS = (_HOOK, EXIT_REFUSED, CREATED_FILES, BAD_MODULES, BAD_PREFIXES, UNAUDITED, REPLACED)
_NAMES = "HOOK, EXIT_REFUSED, CREATED_FILES, BAD_MODULES, BAD_PREFIXES, UNAUDITED, REPLACED"
BOOTSTRAP = f"{_NAMES} = {_CONSTANTS!r}\n{_BOOTSTRAP}"
