"""The program runner's sandbox: results, limits and refusals, each scored wrong with no side effect."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from loramix.evaluate import sandbox_child
from loramix.evaluate.sandbox import PREFIX, Limits, run_program, run_programs

FAST = Limits(timeout=5, cpu_seconds=1)  # CPU time ends a loop; the wall-clock limit is generous for a busy machine


def _sandbox_processes() -> list[str]:
    """Live processes started by the sandbox (their command line names the sandbox folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if PREFIX.encode() in cmdline:
            found.append(pid)
    return found


def _no_sandbox_processes_left(grace: float = 1.0) -> bool:
    end = time.monotonic() + grace  # SIGKILL is delivered asynchronously
    while _sandbox_processes():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def _sandbox_folders() -> int:
    return sum(name.startswith(PREFIX) for name in os.listdir(tempfile.gettempdir()))


@pytest.fixture
def outside():
    """A world-writable folder outside the sandbox, reachable by any user: only the sandbox can refuse."""
    path = Path(tempfile.mkdtemp(prefix="loramix-outside-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_printed_output():
    r = run_program("print(6 * 7)")
    assert (r.ok, r.output, r.error) == (True, "42\n", None)


def test_solution_value_is_printed_pal_style():
    pal = '''
        def solution():
            """Tom has 3 boxes of 4 apples. How many apples?"""
            boxes = 3
            apples_per_box = 4
            return boxes * apples_per_box
    '''
    r = run_program(textwrap.dedent(pal))
    assert r.ok and r.output.strip() == "12"
    assert run_program("def solution(): return 3*4").output == "12\n"


def test_solution_is_not_called_when_the_program_printed():
    assert run_program("def solution(): return 1\nprint(5)").output == "5\n"


def test_exception_is_scored_wrong_with_its_name():
    r = run_program("x = 1\nprint(x / 0)")
    assert not r.ok and "ZeroDivisionError" in r.error


def test_infinite_loop_stops_within_its_limits():
    start = time.monotonic()
    r = run_program("while True:\n    pass", FAST)
    assert not r.ok and r.error in ("timeout", "cpu time")
    assert r.seconds < FAST.timeout + 1 and time.monotonic() - start < FAST.timeout + 1
    assert _no_sandbox_processes_left()


def test_10_gb_allocation_fails_quickly():
    r = run_program("x = bytearray(10 * 1024**3)\nprint(len(x))", FAST)
    assert not r.ok and r.error == "memory" and r.output == ""
    assert r.seconds < FAST.timeout


def test_file_size_is_limited():
    r = run_program("with open('big', 'wb') as f:\n    f.write(b'x' * (64 * 1024**2))", FAST)
    assert not r.ok and "File too large" in r.error
    r = run_program("with open('big', 'wb') as f:\n    f.write(b'x' * (2 * 1024**2))", FAST)
    assert not r.ok and "File too large" in r.error  # 1 MB a file


def test_files_created_are_counted():
    code = "for i in range({n}):\n    open(f'f{{i}}', 'w').write('x')\n    print(i, flush=True)"
    r = run_program(code.format(n=16))
    assert r.ok and r.output.split()[-1] == "15"
    r = run_program(code.format(n=20))  # 20 small files: the 17th is refused
    assert not r.ok and r.error == "refused: open: more than 16 files created or written"
    assert r.output.split()[-1] == "15"
    r = run_program("import os\nfor i in range(20):\n    os.mkdir(f'd{i}')")
    assert not r.ok and r.error.startswith("refused: os.mkdir: more than 16")
    # C's fopen (here ssl's key log, appending) reports the mode only: flags 0; it is a write too
    r = run_program("import ssl, json\nssl.create_default_context().keylog_filename = json.__file__ + '.log'")
    assert not r.ok and r.error.startswith("refused: open"), r.error


def test_limits_are_set_by_the_bootstrap_without_preexec_fn(monkeypatch):
    calls, popen = [], subprocess.Popen

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    names = ("CPU", "AS", "FSIZE", "NOFILE", "CORE")
    code = (
        f"import resource as r\nprint([r.getrlimit(getattr(r, 'RLIMIT_' + n)) for n in {names}], flush=True)\n"
        "r.setrlimit(r.RLIMIT_AS, (-1, -1))"
    )
    r = run_program(code, Limits(cpu_seconds=3, memory_mb=256))
    assert calls and all(kw.get("preexec_fn") is None and kw["start_new_session"] for kw in calls)

    def capped(which, value):  # never above the caller's hard limit
        hard = resource.getrlimit(which)[1]
        return value if hard == resource.RLIM_INFINITY else min(value, hard)

    wanted = [(3, 4), (256 * 1024**2,) * 2, (1024**2,) * 2, (64, 64), (0, 0)]  # hard ones too
    wanted = [tuple(capped(getattr(resource, "RLIMIT_" + n), v) for v in pair) for n, pair in zip(names, wanted)]
    assert r.output == f"{wanted}\n"
    assert not r.ok and r.error == "refused: resource.setrlimit"


def test_fork_bomb_is_refused_and_leaves_no_process():
    r = run_program("import os\nwhile True:\n    os.fork()", FAST)
    assert not r.ok and r.error.startswith("refused: os.fork")
    assert r.seconds < FAST.timeout
    assert _no_sandbox_processes_left()


def test_allowed_child_is_killed_with_its_run():
    # a child that closes its output and sleeps on: the run ends with its parent, the child too
    code = "import os, time\nif os.fork() == 0:\n    os.close(1); os.close(2); time.sleep(30)\nprint('done')"
    r = run_program(code, Limits(timeout=5, cpu_seconds=1, processes=2))
    assert r.ok and r.output == "done\n" and r.seconds < 4
    assert _no_sandbox_processes_left()


@pytest.mark.parametrize("where", ["root home", "own home", "world-writable folder"])
def test_writing_outside_its_folder_is_refused(where, outside):
    folder = {
        "root home": os.path.expanduser("~root"),
        "own home": os.path.expanduser("~"),
        "world-writable folder": str(outside),
    }[where]
    target = os.path.join(folder, f"loramix-pwned-{uuid.uuid4().hex}.txt")
    try:  # the refusal ends the program: catching it does not help
        r = run_program(f"try:\n    open({target!r}, 'w').write('pwned')\nexcept BaseException:\n    pass\nprint(1)")
        assert not r.ok and r.error.startswith("refused: open") and r.output == ""
        assert not os.path.exists(target)
    finally:
        if os.path.exists(target):
            os.remove(target)


def test_deleting_or_renaming_outside_is_refused(outside):
    victim = outside / "keep.txt"
    victim.write_text("keep")
    victim.chmod(0o666)
    for code in (
        f"import os\nos.remove({str(victim)!r})",
        f"import os\nos.rename({str(victim)!r}, 'mine.txt')",
        f"import os\nos.chmod({str(victim)!r}, 0)",
    ):
        r = run_program(code)
        assert not r.ok and r.error.startswith("refused: os."), r.error
    assert victim.read_text() == "keep" and stat.S_IMODE(victim.stat().st_mode) == 0o666


def test_writing_inside_its_folder_is_allowed():
    code = (
        "import os, shutil\nopen('a.txt', 'w').write('hi')\nos.makedirs('d/e')\n"
        "open(os.path.join(os.getcwd(), 'd', 'e', 'b.txt'), 'w').write('!')\nshutil.rmtree('d')\n"
        "print(open('a.txt').read() + str(os.path.exists('d')))"
    )
    r = run_program(code)
    assert (r.ok, r.output, r.error) == (True, "hiFalse\n", None)


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("LORAMIX_TEST_SECRET", "s3cret")
    r = run_program("import os\nprint(os.environ.get('LORAMIX_TEST_SECRET'), dict(os.environ))")
    assert r.ok and r.output.startswith("None ") and "s3cret" not in r.output
    r = run_program("import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())")
    assert not r.ok and "s3cret" not in r.output + r.error


def test_stdin_is_closed():
    read_end, write_end = os.pipe()  # the caller's stdin holds a line the program must not see
    os.write(write_end, b"typed by the caller\n")
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        r = run_program("print(input())")
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert not r.ok and "EOFError" in r.error and "typed" not in r.output


def test_huge_output_is_cut():
    r = run_program("print('x' * 10**7)", FAST)
    assert not r.ok and r.error == "output too large"
    assert len(r.output) <= FAST.output_bytes and r.seconds < FAST.timeout


@pytest.mark.parametrize(
    "code, refused",
    [
        ("import socket\nsocket.create_connection(('127.0.0.1', 9))", "refused: socket."),
        ("import subprocess\nsubprocess.run(['ls'])", "refused: import '_posixsubprocess'"),
        ("import os\nos.system('ls')", "refused: os.system"),
        ("import ctypes", "refused: import 'ctypes'"),
        ("import os\nos.kill(os.getppid(), 0)", "refused: os.kill"),
        ("print(open('/etc/passwd').read())", "refused: open"),
        (
            "import marshal\nexec(marshal.loads(marshal.dumps(compile('print(1)', 'x', 'exec'))))",
            "refused: marshal.loads",
        ),
        ("import sys\nsys.settrace(lambda *a: None)", "refused: sys.settrace"),
        ("import sys\nsys.addaudithook(lambda *a: None)", "refused: sys.addaudithook"),
        ("import sys\nsys._current_frames()", "refused: sys._current_frames"),
        ("import os\nprint(os.listdir(bytearray(b'/etc')))", "refused: os.listdir"),  # not str: not read
        # an extension module loads PyInit_<last part of its name>: a test module under another name
        (
            "import _imp, os, sys, importlib.machinery as m\nso = '_testcapi.cpython-311-x86_64-linux-gnu.so'\n"
            "lib = [p for p in sys.path if os.path.exists(os.path.join(p, 'lib-dynload', so))][0]\n"
            "_imp.create_dynamic(m.ModuleSpec('x._testcapi', None, origin=os.path.join(lib, 'lib-dynload', so)))",
            "refused: import 'x._testcapi'",
        ),
    ],
)
def test_dangerous_calls_are_refused(code, refused):
    r = run_program(code)
    assert not r.ok and r.error.startswith(refused), r.error


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop is for root only")
def test_root_runs_the_program_as_nobody():
    r = run_program("import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    assert r.ok and r.output.split()[0] != "0" and "[]" in r.output


def test_temporary_folders_are_removed():
    before = _sandbox_folders()
    codes = [
        "import os\nos.mkdir('locked')\nopen('locked/f', 'w').close()\nos.chmod('locked', 0)\nprint(1)",
        "while True:\n    pass",
        "open('/root/x', 'w')",
        "print('x' * 10**6)",
    ]
    results = run_programs(codes, FAST, workers=2)
    assert results[0].ok and not any(r.ok for r in results[1:])
    assert _sandbox_folders() == before


def test_run_programs_keeps_order_and_runs_in_parallel():
    results = run_programs([f"print({i} * {i})" for i in range(8)])
    assert [r.output for r in results] == [f"{i * i}\n" for i in range(8)]
    start = time.monotonic()
    results = run_programs(["import time\ntime.sleep(0.5)\nprint('slept')"] * 4, workers=4)
    assert all(r.ok for r in results) and time.monotonic() - start < 1.5


def test_imports_compile_from_source_and_still_work():
    # no cached bytecode is read (it would go through marshal.loads, refused)
    code = (
        "import json, math, fractions, re, decimal, collections, statistics\n"
        "P = collections.namedtuple('P', 'x y')\n"
        "print(json.dumps(math.sqrt(16)), fractions.Fraction(3, 6), re.findall(r'\\d', 'a1b2'),"
        " decimal.Decimal('1.1') + 1, P(1, 2), statistics.mean([1, 2, 3]))"
    )
    r = run_program(code)
    assert (r.ok, r.output) == (True, "4.0 1/2 ['1', '2'] 2.1 P(x=1, y=2) 2\n"), r.error


@pytest.mark.parametrize(
    "how",
    [
        "import os\nos.mknod(TARGET)",
        "import os\nos.mkfifo(TARGET)",
        "import posix\nposix.mknod(TARGET)",
        "import _imp, importlib.machinery as m\n_imp.create_builtin(m.ModuleSpec('posix', None)).mknod(TARGET)",
        "import sys\ndel sys.modules['posix']\nimport posix\nposix.mkfifo(TARGET)",
    ],
)
def test_calls_without_an_audit_event_are_gone(how, outside):
    # mknod and mkfifo raise no audit event: they make files anywhere nobody may write
    target = outside / "left-behind"
    r = run_program(how.replace("TARGET", repr(str(target))) + "\nprint('ok')")
    assert not r.ok and r.output == "" and not os.path.lexists(target)
    names = ", ".join(repr(n) for n in sandbox_child.UNAUDITED)
    r = run_program(
        f"import os, posix, signal\nprint([n for n in ({names}) for m in (os, posix, signal) if hasattr(m, n)])"
        "\nfrom os import *"
    )
    assert (r.ok, r.output, r.error) == (True, "[]\n", None)


@pytest.mark.skipif(os.geteuid() != 0, reason="the library is reached through open fds for root only")
def test_native_code_of_the_program_cannot_be_loaded():
    # as nobody, the library folders are /proc/self/fd/N: a program could put its own folder there
    code = """import os, sys
so = "_bisect.cpython-311-x86_64-linux-gnu.so"
lib = [p for p in sys.path if os.path.exists(os.path.join(p, so))][0]
os.mkdir("dyn")
open("dyn/" + so, "wb").write(open(os.path.join(lib, so), "rb").read())  # in principle, its own code
os.dup2(os.open("dyn", os.O_RDONLY), int(lib.rsplit("/", 1)[1]))
sys.modules.pop("_bisect", None)
sys.path_importer_cache.clear()
import _bisect
print(os.stat(_bisect.__file__).st_uid)"""
    r = run_program(code)
    assert not r.ok and r.error == "refused: import '_bisect'" and r.output == ""


@pytest.mark.parametrize("call", ["os.setsid()", "os.setpgrp()", "os.setpgid(0, 0)"])
def test_a_child_cannot_leave_the_process_group(call):
    code = f"import os, time\nif os.fork() == 0:\n    {call}\n    time.sleep(10)\n    os._exit(0)\nprint('done')"
    try:  # (processes=3: the NPROC count of nobody includes children not reaped yet by init)
        r = run_program(code, Limits(timeout=2, cpu_seconds=1, processes=3))
        assert r.ok and r.output == "done\n"
        assert _no_sandbox_processes_left()
    finally:
        for pid in _sandbox_processes():
            os.kill(int(pid), signal.SIGKILL)
