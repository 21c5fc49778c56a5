"""The site's long-lived ClientApp process and the `flwr-clientapp` launcher that feeds it.

A real process (`python -m cli.clientapp_server`), the real launcher `fedvault client` writes;
what a task does inside is the deployment tests' business (every deployed stage runs here).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from orphans import outlives_its_parent

from cli.clientapp_server import READY_MARK, write_launchers


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clientapp")
    sock = Path(tempfile.mkdtemp(prefix="fedvault-test-")) / "clientapp.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.clientapp_server", str(sock)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # the warm imports, then the mark
    assert READY_MARK in line, line
    launcher = write_launchers(folder / "state", sys.executable, sock) / "flwr-clientapp"
    yield process, sock, launcher
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(sock.parent)


def launch(launcher: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/nonexistent"}  # -IS: neither is read
    return subprocess.run(
        [str(launcher), *args], capture_output=True, text=True, timeout=30, env=env, **kwargs
    )


def test_the_socket_and_launchers_are_the_owners_alone(served):
    _, sock, launcher = served
    assert sock.stat().st_mode & 0o777 == 0o600
    assert launcher.stat().st_mode & 0o777 == 0o700
    assert (launcher.parent / "flower-superexec").stat().st_mode & 0o777 == 0o700
    assert launcher.read_text().startswith(f"#!{sys.executable} -IS\n")


def test_bad_arguments_end_the_task_not_the_process(served):
    process, _, launcher = served
    started = time.monotonic()
    done = launch(launcher, "--runtime-api-address", "127.0.0.1:1")  # no token
    assert done.returncode == 2
    assert time.monotonic() - started < 5  # no import: the process had them already
    with socket.socket(socket.AF_UNIX) as probe:  # a readiness probe, then garbage
        probe.connect(str(served[1]))
    with socket.socket(socket.AF_UNIX) as junk:
        junk.connect(str(served[1]))
        junk.sendall(b'{"not": "a list"}\n')
        assert junk.recv(16) == b""
    assert launch(launcher, "--token", "x").returncode == 2
    assert process.poll() is None


def test_a_launcher_without_its_process_says_so(tmp_path):
    gone = tmp_path / "gone.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # a process that listened, then died
        dead.bind(str(gone))
    launcher = write_launchers(tmp_path, sys.executable, gone) / "flwr-clientapp"
    done = launch(launcher, "--token", "x")
    assert done.returncode == 1
    assert "the site's ClientApp process is not answering" in done.stderr


def test_a_launcher_waits_for_a_process_still_starting(tmp_path):
    """The SuperNode starts beside the ClientApp process and may hand over a task before
    the process is warm; the socket appears only then."""
    sock = tmp_path / "late.sock"
    launcher = write_launchers(tmp_path, sys.executable, sock) / "flwr-clientapp"
    waiting = subprocess.Popen([str(launcher), "--token", "x"], env={"PATH": "/usr/bin:/bin"})
    time.sleep(1.0)
    assert waiting.poll() is None
    with socket.socket(socket.AF_UNIX) as late:
        late.bind(str(sock))
        late.listen(1)
        late.settimeout(30)
        connection, _ = late.accept()
        with connection:
            assert connection.makefile("rb").readline() == b'["--token", "x"]\n'
            connection.sendall(b"7\n")
    assert waiting.wait(timeout=30) == 7


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_gets_no_task_run(served):
    """The socket is 0600 in a directory only its owner may enter; even past those, the
    process asks the kernel who is calling (SO_PEERCRED) and serves only its own user."""
    process, sock, _ = served
    opened = [(sock, 0o666), *((folder, 0o711) for folder in sock.parents if folder != Path("/"))]
    modes = [(path, path.stat().st_mode & 0o777) for path, _ in opened]
    for path, mode in opened:
        path.chmod(mode | (path.stat().st_mode & 0o777))
    try:
        pid = os.fork()
        if pid == 0:  # the other user: what does the process answer it?
            code = 3
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as other:
                    other.connect(str(sock))
                    try:
                        other.sendall(b'["--token", "x"]\n')
                        code = 0 if other.recv(16) == b"" else 1
                    except (BrokenPipeError, ConnectionResetError):  # closed, request unread
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        for path, mode in modes:
            path.chmod(mode)
    assert os.waitstatus_to_exitcode(status) == 0  # connected, and hung up on: no task
    assert process.poll() is None


def test_a_launcher_dies_with_the_superexec_that_started_it(tmp_path):
    """A SuperExec killed outright leaves no launcher waiting on a task's status."""
    sock = Path(tempfile.mkdtemp(prefix="fedvault-test-")) / "silent.sock"
    launcher = write_launchers(tmp_path, sys.executable, sock) / "flwr-clientapp"
    superexec = (  # starts the launcher and waits, as Flower's SuperExec does
        "import subprocess, sys, time\n"
        f"print(subprocess.Popen([{str(launcher)!r}, '--token', 'x']).pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    with socket.socket(socket.AF_UNIX) as silent:  # takes the task, never answers
        silent.bind(str(sock))
        silent.listen(1)
        parent = subprocess.Popen([sys.executable, "-c", superexec], stdout=subprocess.PIPE)
        try:
            assert parent.stdout is not None
            pid = int(parent.stdout.readline())
            silent.settimeout(30)
            connection, _ = silent.accept()  # the launcher is in, waiting for the status
            with connection:
                left = outlives_its_parent(pid, parent)
                assert not left, "the launcher outlived the SuperExec that started it"
        finally:
            parent.kill()
            shutil.rmtree(sock.parent)
