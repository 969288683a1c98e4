"""The process around a command: after it, a further Ctrl-C ends the process quietly with 130."""

from __future__ import annotations

import subprocess
import sys


def test_a_ctrl_c_while_python_exits_ends_quietly():
    code = (
        "import os, signal, sys\n"
        "sys.argv = ['loramix', '--version']\n"
        "from loramix.cli.app import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "os.kill(os.getpid(), signal.SIGINT)  # as a second Ctrl-C during shutdown would\n"
        "print('not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and "not reached" not in proc.stdout
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
