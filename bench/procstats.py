"""Memory and CPU-load readings of the current process, shared by the benchmarks' worker processes
(Linux: /proc)."""

from __future__ import annotations

import os


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (what ru_maxrss reports) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def busy_seconds() -> tuple[float, float]:
    """(CPU seconds all processes spent busy, CPU seconds this process spent), from /proc/stat and os.times."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def other_load(before: tuple[float, float], after: tuple[float, float], wall: float) -> float | None:
    """Share of the machine's CPU capacity that other processes used during `wall` seconds (None if too
    short to tell: /proc/stat counts in 10 ms ticks)."""
    if wall < 0.5:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(others, 0.0) / (wall * os.cpu_count())
