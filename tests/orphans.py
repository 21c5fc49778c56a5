"""Whether a process dies with the one that started it, as the parent-death signal promises."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from cli import processes


def outlives_its_parent(pid: int, parent: subprocess.Popen) -> bool:
    """Kill `parent` outright; whether `pid` is still alive 5 s later (it is killed then)."""
    start = processes._proc_stat(pid)[2]
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 5
    while processes.alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = processes.alive(pid, start)
    if left:
        os.kill(pid, signal.SIGKILL)
    return left
