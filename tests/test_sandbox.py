"""The program runner's sandbox: results, limits and refusals, each scored wrong with no side effect."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from loramix.sandbox import PREFIX, Limits, run_program, run_programs

FAST = Limits(timeout=1, cpu_seconds=1)


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
    folder = {"root home": os.path.expanduser("~root"), "own home": os.path.expanduser("~"),
              "world-writable folder": str(outside)}[where]
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
    for code in (f"import os\nos.remove({str(victim)!r})", f"import os\nos.rename({str(victim)!r}, 'mine.txt')",
                 f"import os\nos.chmod({str(victim)!r}, 0)"):
        r = run_program(code)
        assert not r.ok and r.error.startswith("refused: os."), r.error
    assert victim.read_text() == "keep" and stat.S_IMODE(victim.stat().st_mode) == 0o666


def test_writing_inside_its_folder_is_allowed():
    code = ("import os, shutil\nopen('a.txt', 'w').write('hi')\nos.makedirs('d/e')\n"
            "open(os.path.join(os.getcwd(), 'd', 'e', 'b.txt'), 'w').write('!')\nshutil.rmtree('d')\n"
            "print(open('a.txt').read() + str(os.path.exists('d')))")
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


@pytest.mark.parametrize("code, refused", [
    ("import socket\nsocket.create_connection(('127.0.0.1', 9))", "refused: socket."),
    ("import subprocess\nsubprocess.run(['ls'])", "refused: import '_posixsubprocess'"),
    ("import os\nos.system('ls')", "refused: os.system"),
    ("import ctypes", "refused: import 'ctypes'"),
    ("import os\nos.kill(os.getppid(), 0)", "refused: os.kill"),
    ("print(open('/etc/passwd').read())", "refused: open"),
])
def test_dangerous_calls_are_refused(code, refused):
    r = run_program(code)
    assert not r.ok and r.error.startswith(refused), r.error


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop is for root only")
def test_root_runs_the_program_as_nobody():
    r = run_program("import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    assert r.ok and r.output.split()[0] != "0" and "[]" in r.output


def test_temporary_folders_are_removed():
    before = _sandbox_folders()
    codes = ["import os\nos.mkdir('locked')\nopen('locked/f', 'w').close()\nos.chmod('locked', 0)\nprint(1)",
             "while True:\n    pass", "open('/root/x', 'w')", "print('x' * 10**6)"]
    results = run_programs(codes, FAST, workers=2)
    assert results[0].ok and not any(r.ok for r in results[1:])
    assert _sandbox_folders() == before


def test_run_programs_keeps_order_and_runs_in_parallel():
    results = run_programs([f"print({i} * {i})" for i in range(8)])
    assert [r.output for r in results] == [f"{i * i}\n" for i in range(8)]
    start = time.monotonic()
    results = run_programs(["import time\ntime.sleep(0.5)\nprint('slept')"] * 4, workers=4)
    assert all(r.ok for r in results) and time.monotonic() - start < 1.5
