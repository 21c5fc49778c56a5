"""cli.processes.Supervisor: a child that crashed but hangs on is reported, then stopped.

The test process is not made a subreaper (that is for `fedvault server/client`), so later
tests still see only their own children.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from orphans import outlives_its_parent

from cli import processes
from cli.processes import Supervisor
from privacy.errors import FedVaultError

HANGS_AFTER_CRASH = (
    "import threading, time\n"
    "threading.Thread(target=time.sleep, args=(600,)).start()\n"
    "raise FileNotFoundError('flower-superexec')\n"
)
RECOVERS = (
    "import sys, time\n"
    "print('Traceback (most recent call last):', flush=True)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture(autouse=True)
def no_subreaper(monkeypatch):
    monkeypatch.setattr(processes, "become_subreaper", lambda: None)


def test_child_that_crashed_and_hangs_is_reported_and_stopped(monkeypatch):
    monkeypatch.setattr(processes, "CRASH_GRACE_S", 1.0)
    start = time.monotonic()
    with pytest.raises(FedVaultError) as error, Supervisor() as supervisor:
        child = supervisor.start(
            "node", [sys.executable, "-u", "-c", HANGS_AFTER_CRASH], os.environ
        )
        supervisor.wait_until(child, lambda: False, 60, "connection to the server")
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "node crashed before connection to the server" in message
    assert "FileNotFoundError: flower-superexec" in message
    assert child.exited() is not None


def test_child_that_recovers_within_the_grace_is_ready(monkeypatch):
    monkeypatch.setattr(processes, "CRASH_GRACE_S", 30.0)
    with Supervisor() as supervisor:
        child = supervisor.start("node", [sys.executable, "-u", "-c", RECOVERS], os.environ)
        supervisor.wait_until(
            child, lambda: any("ready" in line for line in child.output()), 60, "ready"
        )
        assert child.exited() is None
    assert child.exited() is not None


def test_a_program_flower_starts_dies_with_the_process_that_started_it(tmp_path):
    """What the site's bin/ launchers arm: a SuperExec outlives no killed SuperNode."""
    import subprocess

    pid_file = tmp_path / "grandchild.pid"
    grandchild = (
        "import os, time\n"
        "from cli.processes import arm_parent_death_signal\n"
        "arm_parent_death_signal()\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    child = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}])\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", child], cwd=Path(__file__).resolve().parents[1]
    )
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = outlives_its_parent(int(pid_file.read_text()), parent)
        assert not left, "the grandchild outlived the process that started it"
    finally:
        parent.kill()
