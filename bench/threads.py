"""How many torch threads should train-skill use on a small machine? Runs `loramix train-skill`
on loramix-tiny for a fixed number of steps with --threads 1 and with one thread per core, first
alone and then beside a second, busy training process, and prints tokens/s for each.

    python bench/threads.py [--steps 40]

Writes bench/results/threads.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def train(out: Path, threads: int, steps: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "loramix",
        "train-skill",
        "builtin:math",
        "-o",
        str(out),
        "--force",
        "--json",
        "--max-steps",
        str(steps),
        "--threads",
        str(threads),
        "--val-fraction",
        "0",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def tokens_per_second(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"train-skill failed with exit code {proc.returncode}")
    return json.loads(out)["tokens_per_second"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    a = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in sorted({1, cores}):
            alone = tokens_per_second(train(Path(tmp) / "a", threads, a.steps))
            busy = train(Path(tmp) / "busy", cores, a.steps * 3)  # the neighbour, started first
            shared = tokens_per_second(train(Path(tmp) / "b", threads, a.steps))
            busy.kill()
            busy.wait()
            rows.append((threads, alone, shared))
            print(
                f"threads {threads}: alone {alone:,.0f} tok/s, beside a busy process {shared:,.0f} tok/s",
                file=sys.stderr,
            )
    lines = [
        f"train-skill builtin:math on loramix-tiny, {a.steps} steps, {cores} cores. Command: `python bench/threads.py --steps {a.steps}`",
        "",
        "| --threads | alone (tok/s) | beside a busy training process (tok/s) |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {t} | {x:,.0f} | {y:,.0f} |" for t, x, y in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
