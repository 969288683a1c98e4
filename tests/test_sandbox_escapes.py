"""The sandbox against program code run inside its audit hook, and the escapes a security review
found: each a hostile program run through the public API (one through `loramix eval -m program`),
refused, with no side effect outside its folder."""

from __future__ import annotations

import dis
import itertools
import json
import os
import shutil
import stat
import tempfile
import textwrap
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.evaluate import sandbox_child
from loramix.evaluate.sandbox import Limits, run_program

SLOW = Limits(timeout=20, cpu_seconds=10)  # the attacks loop; a busy machine must not cut them short

# Program code that runs inside the audit hook (a signal handler between two of its bytecodes, a
# finalizer run by a collection it triggers) reaches its frames and compares each of their locals
# with Evil(): a mapping proxy's == hands its real dict to Evil.__eq__, which empties it. The hook's
# path table once was one: emptied, it let rename, mkdir, remove, chmod... through anywhere.
_ATTACK = """
import gc, os, signal, sys
cleared, reached = [], []
class Evil:
    def __eq__(self, other):
        if type(other) in (dict, list, set, bytearray):
            other.clear()
            cleared.append(type(other).__name__)
        return False
    __hash__ = object.__hash__
def search(frame):
    while frame is not None:
        if "_hook" in frame.f_globals:  # one of the hook's functions
            reached.append(1)
            for value in list(frame.f_locals.values()):
                value == Evil()
        frame = frame.f_back
{trigger}
for i in range({rounds}):
    if cleared:
        break
    {churn}os.listdir(".")
print(len(reached) > 0, cleared, flush=True)
{escape}
"""

_SIGNAL = """
def handler(signum, frame):
    search(frame)
    if cleared:
        signal.setitimer(signal.ITIMER_REAL, 0)
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
"""

_FINALIZER = """
class Cycle:
    def __del__(self):
        search(sys._getframe(1))
def churn():
    a, b = Cycle(), Cycle()
    a.other, b.other = b, a
gc.set_threshold(1, 1, 1)
"""


def _attack(trigger: str, escape: str, rounds: int = 200000) -> str:
    churn = "churn(); " if trigger is _FINALIZER else ""
    return _ATTACK.format(trigger=trigger, rounds=rounds, churn=churn, escape=textwrap.dedent(escape).strip())


@pytest.fixture
def outside():
    """A world-writable folder outside the sandbox, reachable by any user: only the sandbox can refuse."""
    path = Path(tempfile.mkdtemp(prefix="loramix-outside-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_signal_handler_in_the_hook_cannot_empty_its_path_table(outside):
    moved, made = outside / "program.py", outside / "made"
    escape = f"os.rename('program.py', {str(moved)!r})\nos.mkdir({str(made)!r})"
    r = run_program(_attack(_SIGNAL, escape), SLOW)
    assert not moved.exists() and not made.exists(), r
    assert (r.ok, r.output, r.error) == (False, "", "refused: signal.signal")


def test_a_finalizer_in_the_hook_finds_nothing_to_empty(outside):
    moved, made = outside / "program.py", outside / "made"
    escape = f"os.rename('program.py', {str(moved)!r})\nos.mkdir({str(made)!r})"
    r = run_program(_attack(_FINALIZER, escape, rounds=3000), SLOW)
    assert not moved.exists() and not made.exists(), r
    assert r.output == "True []\n", r  # it ran inside the hook: nothing there could be emptied
    assert r.error == f"refused: os.rename {str(moved)!r}"


def test_hook_defaults_hand_out_nothing_mutable():
    # what a program reaching the hook's frames finds: every default of every function is immutable
    # and none compares by handing out something mutable (a mapping proxy hands out its dict)
    names = {"FOLDER": "/f", "READ_ROOTS": ("/f",), "LIB_ROOTS": (), "LIB_FDS": (("/proc/self/fd/3", 1, 2),)}
    names |= {"FORK": (), "REPLACED_EVENTS": (), "REFUSED": 86, "CREATED": 16, "WRITE": 0o1103}
    names |= {"BAD_MODULES": ("ctypes",), "BAD_PREFIXES": ("_test",), "FOLDER_ID": (1, 2)}
    namespace = dict(names)
    exec(sandbox_child._HOOK, namespace)
    functions = [v for v in namespace.values() if isinstance(v, types.FunctionType)]
    immutable = (str, bytes, int, bool, type(None), type, types.BuiltinFunctionType, types.FunctionType)
    immutable += (itertools.count,)  # next() only: a program could only make the hook refuse sooner

    def check(value, where):
        if type(value) is tuple:
            for item in value:
                check(item, where)
        else:
            assert type(value) in immutable, f"{where}: {type(value).__name__}"

    assert len(functions) >= 7
    for function in functions:
        check(function.__defaults__ or (), function.__name__)
        assert function.__kwdefaults__ is None and function.__closure__ is None


def test_a_program_cannot_touch_a_parallel_program_folder(monkeypatch):
    folders, mkdtemp = [], tempfile.mkdtemp

    def spy(*args, **kwargs):
        folders.append(mkdtemp(*args, **kwargs))
        return folders[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    victim = """import os, time
end = time.monotonic() + 15
while not os.path.exists("done") and time.monotonic() < end:
    time.sleep(0.02)
print(sorted(os.listdir(".")))"""
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_program, victim, SLOW)
        end = time.monotonic() + 10
        while len(folders) < 2 and time.monotonic() < end:  # the run's folder, then the program's in it
            time.sleep(0.01)
        assert stat.S_IMODE(os.stat(folders[0]).st_mode) == 0o711  # passed through, never listed
        there = os.path.realpath(folders[1])
        escape = f"""
            os.rename({there + "/program.py"!r}, {there + "/moved.py"!r})
            os.mkdir({there + "/made"!r})
            os.remove({there + "/moved.py"!r})"""
        r = run_program(_attack(_FINALIZER, escape, rounds=3000), SLOW)
        Path(there, "done").write_text("")
        result = running.result()
    assert r.error == f"refused: os.rename {there + '/program.py'!r}", r
    assert (result.ok, result.output) == (True, "['done', 'program.py']\n"), result


@pytest.mark.parametrize(
    "code",
    [
        "import os\nprint(os.readlink(f'/proc/{os.getppid()}/cwd'))",
        "import os\nprint(os.readlink(f'/proc/{os.getppid()}/root'))",
        "import os\nprint(os.readlink(f'/proc/{os.getppid()}/fd/0'))",
        "import posix\nprint(posix.readlink('/proc/1/cwd'))",
        "import os\nprint(os.path.realpath(f'/proc/{os.getppid()}/cwd'))",
        "import pathlib\nprint(pathlib.Path('/proc/self/cwd').readlink())",
    ],
)
def test_links_of_processes_are_not_read(code):
    # /proc/<pid>/cwd names the folder of a parallel program (or the caller's); readlink is refused
    r = run_program(code)
    assert (r.ok, r.output, r.error) == (False, "", "refused: os.readlink"), r


def test_directory_fds_are_checked_up_their_parents():
    # the hook holds no readlink: a dir_fd is inside the folder when the folder is among its parents
    code = "import os\nos.makedirs('d/e')\nfd = os.open('d/e', os.O_RDONLY)\nos.mkdir('f', dir_fd=fd)\n"
    r = run_program(code + "os.rmdir('f', dir_fd=fd)\nos.rename('f', 'g', src_dir_fd=fd)")
    assert r.error == "FileNotFoundError: [Errno 2] No such file or directory: 'f' -> 'g'", r
    if os.geteuid() == 0:  # the library's folders are open as /proc/self/fd/N: outside the folder
        code = "import os, sys\nfd = int(sys.path[0].rsplit('/', 1)[1])\n"
        r = run_program(code + "sub = os.open('encodings', os.O_RDONLY, dir_fd=fd)\nos.mkdir('x', dir_fd=sub)")
        assert r.error == "refused: os.mkdir with dir_fd", r
        r = run_program(code + "os.remove('os.py', dir_fd=fd)")
        assert r.error == "refused: os.remove with dir_fd", r


@pytest.mark.parametrize(
    "code, refused",
    [
        ("import os\nprint(os.listdir(f'/proc/{os.getppid()}/fd'))", "refused: os.listdir"),
        ("import os\nprint(os.listdir(f'/proc/{os.getppid()}/cwd'))", "refused: os.listdir"),
        ("import os\nprint(open(f'/proc/{os.getppid()}/cmdline').read())", "refused: open"),
        ("import os\nprint(os.open(f'/proc/{os.getppid()}/cwd', os.O_RDONLY))", "refused: open"),
    ],
)
def test_proc_entries_of_other_processes_are_refused(code, refused):
    r = run_program(code)
    assert not r.ok and r.output == "" and r.error.startswith(refused), r


@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user, metadata under /proc/<pid> stays readable")
def test_proc_links_of_other_processes_are_closed_to_nobody():
    # the drop to nobody leaves the process non-dumpable: the kernel then hides its /proc links from
    # every other process of nobody (a parallel program) and the caller's from it
    code = "import os\ntry:\n    os.stat(f'/proc/{os.getppid()}/cwd')\nexcept PermissionError:\n    print('closed')"
    r = run_program(code)
    assert (r.ok, r.output) == (True, "closed\n"), r


@pytest.mark.parametrize(
    "code, refused",
    [
        ("import pwd\nprint(pwd.getpwall())", "pwd.getpwall"),
        ("import pwd\nprint(pwd.getpwnam('root'))", "pwd.getpwnam"),
        ("from pwd import getpwuid\nprint(getpwuid(0))", "pwd.getpwuid"),
        ("import grp\nprint(grp.getgrall())", "grp.getgrall"),
        ("import grp\nprint(grp.getgrnam('root'))", "grp.getgrnam"),
        ("import grp\nprint(grp.getgrgid(0))", "grp.getgrgid"),
        ("import os\nprint(os.getgrouplist('root', 0))", "os.getgrouplist"),
        ("import os\nprint(os.path.expanduser('~root'))", "pwd.getpwnam"),
        ("import sys\ndel sys.modules['grp']\nimport grp\nprint(grp.getgrall())", "import 'grp'"),
        ("import sys\ndel sys.modules['pwd']\nimport pwd\nprint(pwd.getpwall())", "import 'pwd'"),
        (
            "import _imp, grp, importlib.machinery as m\n"
            "print(_imp.create_dynamic(m.ModuleSpec('x.grp', None, origin=grp.__file__)).getgrall())",
            "import 'x.grp'",
        ),
    ],
)
def test_user_and_group_databases_are_not_read(code, refused):
    # the C library reads /etc/passwd and /etc/group itself: no open event the hook could refuse
    r = run_program(code)
    assert not r.ok and r.output == "" and r.error.startswith("refused: " + refused), r
    assert "pw_name" not in r.error and "gr_name" not in r.error


def test_modules_that_import_pwd_and_grp_still_work():
    code = (
        "import getpass, os, pathlib, shutil, tarfile\n"
        "print(pathlib.Path.home() == pathlib.Path.cwd(), os.path.realpath('.') == os.getcwd())"
    )
    r = run_program(code)
    assert (r.ok, r.output, r.error) == (True, "True True\n", None)


@pytest.mark.parametrize(
    "call",
    [
        "signal.signal(signal.SIGALRM, lambda *a: None)",
        "signal.signal(signal.SIGINT, signal.SIG_IGN)",
        "signal.setitimer(signal.ITIMER_REAL, 0.001)",
        "signal.alarm(1)",
        "signal.set_wakeup_fd(1)",
        "signal.siginterrupt(signal.SIGALRM, True)",
        "signal.raise_signal(signal.SIGUSR1)",
        "signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)",
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGXCPU])",
        "_signal.signal(signal.SIGALRM, print)",
    ],
)
def test_signal_handlers_and_timers_are_refused(call):
    name = call.split("(")[0].split(".")[1]
    r = run_program(f"import signal, _signal, threading\n{call}\nprint('done')")
    assert (r.ok, r.output, r.error) == (False, "", f"refused: signal.{name}"), r


def test_no_module_keeps_a_replaced_function():
    # os holds posix's functions, signal _signal's: each is replaced wherever it is
    names = [n for _, _, names in sandbox_child.REPLACED for n in names]
    code = (
        "import sys, os, posix, signal, _signal, pwd, grp, shutil, pathlib, tarfile, getpass\n"
        "print(sorted({m for m, v in list(sys.modules.items()) for n, f in vars(v).items()"
        f" if n in {names!r} and type(f) is type(len)}}))"
    )
    r = run_program(code)
    assert (r.ok, r.output) == (True, "[]\n"), r


def test_signal_module_still_imports_and_reads():
    # what SIGINT's handler is depends on how the run was started (a shell's background job ignores
    # it); reading it at all is what the sandbox must allow
    code = (
        "import sys, signal\n"
        "print(signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL))"
    )
    r = run_program(code)
    assert (r.ok, r.output) == (True, "True\n"), r
    r = run_program("import sys\ndel sys.modules['_signal']\nimport _signal")
    assert (r.ok, r.error) == (False, "refused: import '_signal'"), r


_EQ_IN_THE_HOOK = """
import shutil, socket, sys
class E:  # the hook once compared a dir_fd with -1: this ran inside it, with its globals
    def __eq__(s, o):
        print("in the hook", flush=True)
        g = sys._getframe(1).f_globals; g["FOLDER"] = ""; g["DENY"] = ("x",); return True
    __hash__ = object.__hash__
try:
    shutil.rmtree("x", dir_fd=E())
except Exception:
    pass
"""

_FINALIZER_IN_THE_HOOK = """
import gc, os, sys
class Cycle:
    def __del__(self):  # run by the collector, maybe inside the hook: its frames are reachable
        frame = sys._getframe(1)
        while frame is not None:
            frame.f_globals.update(FOLDER="", DENY=("x",), READ_ROOTS=("",)) if "FOLDER" in frame.f_globals else 0
            frame = frame.f_back
gc.set_threshold(1, 1, 1)
for i in range(20000):
    a, b = Cycle(), Cycle()
    a.other, b.other = b, a
    del a, b
    os.listdir(".")
"""

_SIGNAL_IN_THE_HOOK = """
import os, signal
hit = []
def handler(signum, frame):  # runs between two bytecodes, maybe of the hook's
    while frame is not None:
        if "FOLDER" in frame.f_globals:
            frame.f_globals.update(FOLDER="", DENY=("x",), READ_ROOTS=("",))
            hit.append(1)
            signal.setitimer(signal.ITIMER_REAL, 0)
        frame = frame.f_back
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
for i in range(100000):
    if hit:
        break
    os.listdir(".")
print(len(hit), flush=True)
"""


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(_EQ_IN_THE_HOOK, id="__eq__ of a dir_fd"),
        pytest.param(_FINALIZER_IN_THE_HOOK, id="finalizer"),
        pytest.param(_SIGNAL_IN_THE_HOOK, id="signal handler"),
    ],
)
def test_program_code_in_the_hook_changes_nothing(attack, outside):
    target = outside / "pwned.txt"
    r = run_program(attack + f"open({str(target)!r}, 'w').write('left behind')\nimport socket\nsocket.socket()")
    assert not r.ok and r.error.startswith("refused: ") and not os.path.lexists(target), r
    assert "in the hook" not in r.output  # it looks only at objects of exact builtin types
    if attack is _SIGNAL_IN_THE_HOOK:  # a handler could run inside the hook: installing one is refused
        assert (r.output, r.error) == ("", "refused: signal.signal")


def test_hook_reads_no_global_at_run_time():
    # its state is bound as immutable default arguments: a program that reaches its globals
    # (through a frame, as above) cannot change what it refuses
    code = compile(sandbox_child._HOOK, "hook", "exec")
    functions = [c for c in code.co_consts if isinstance(c, types.CodeType)]
    assert len(functions) >= 5
    for function in functions:
        names = [
            i.argval
            for i in dis.get_instructions(function)
            if "GLOBAL" in i.opname or "NAME" in i.opname or "DEREF" in i.opname
        ]
        nested = [c for c in function.co_consts if isinstance(c, types.CodeType)]
        assert (function.co_name, names, nested) == (function.co_name, [], [])


def test_eval_program_metric_runs_a_hostile_reference_in_the_sandbox(tmp_path, outside):
    # `eval -m program` runs each row's reference program (no "answer") before loading the model
    made = outside / "made"
    row = {
        "prompt": "Compute 6 * 7 in Python.\n",
        "completion": _attack(_SIGNAL, f"os.mkdir({str(made)!r})\nprint(42)"),
    }
    data = tmp_path / "hostile.jsonl"
    data.write_text(json.dumps(row) + "\n")
    args = ["eval", "-d", str(data), "-m", "program", "--limit", "1", "--threads", "1", "--max-new-tokens", "2"]
    result = CliRunner().invoke(app, args)
    assert not made.exists()
    assert result.exit_code != 0 and "refused: signal.signal" in result.output + result.stderr, result.output
