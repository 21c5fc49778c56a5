"""The site's long-lived ClientApp process: every task served warm, one at a time.

Flower 1.42's SuperNode has each message it receives answered by a new `flwr-clientapp`
process, which imports Flower's runtime, torch and Opacus, reads the site's table, verifies
its ledger and rebuilds its accountant before it can begin: seconds of every stage of every
round, on a loaded machine. `fedvault client` therefore starts this process beside the
SuperNode. It listens on a Unix socket in a directory only the site's user may enter
(cli/processes.py, `socket_dir`), and the `flwr-clientapp` first on the SuperNode's PATH is
only a launcher (`write_launchers`): a Python started without site-packages that hands its
arguments over and exits with the task's status. This process runs each task with the
site's own runtime (client/app_process.py: the build approval, then the site's installed
ClientApp), and keeps what the ClientApp keeps between tasks (its data, its verified
ledger rows, its identity), as a simulated site's Ray worker does.

Tasks are served one at a time, as the SuperNode hands them out; a caller of another user
is refused (SO_PEERCRED). A task that fails sends Flower's error reply and the process goes
on; a task the SuperNode cancels (it signals SIGINT through Flower's heartbeat) is dropped.
The process stops with `fedvault client` (SIGTERM, or the parent-death signal), and
`fedvault client` stops when it does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from cli.processes import PR_SET_PDEATHSIG
from privacy.atomic import atomic_write_text

READY_MARK = "ClientApp process ready"
WARM_MODULES = (
    "flwr.supernode.runtime.run_clientapp",
    "client.app_process",
    "client.app",
    "client.local_round",
    "client.distributed_step",
    "client.budget",
)
"""What a ClientApp task imports, imported before the first task arrives."""
MAX_REQUEST = 1 << 16
STARTUP_WAIT_S = 120
"""How long a launcher waits for a ClientApp process that is still importing: the site's
SuperNode starts beside it, not after it, and may hand over a task first."""
PEER_CREDENTIALS = struct.Struct("3i")  # pid, uid, gid


def serve(listen: Path) -> None:
    """Import what every task needs, then run the task of each launcher that calls."""
    from client.app_process import run_task

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # see `_run`
    for module in WARM_MODULES:
        importlib.import_module(module)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(listen))
        os.chmod(listen, 0o600)
        server.listen(16)
        print(f"fedvault: {READY_MARK} on {listen}", flush=True)
        while True:
            connection, _ = server.accept()
            with connection, contextlib.suppress(OSError):  # a launcher that hung up
                argv = _task_arguments(connection)
                if argv is not None:
                    connection.sendall(f"{_run(run_task, argv)}\n".encode())


def _task_arguments(connection: socket.socket) -> list[str] | None:
    """The launcher's arguments (one JSON list of strings on one line), if the caller is
    this user's; None for anything else, such as a readiness probe."""
    _, uid, _ = PEER_CREDENTIALS.unpack(
        connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEER_CREDENTIALS.size)
    )
    if uid != os.getuid():
        print(f"fedvault: refused a ClientApp request from user {uid}", flush=True)
        return None
    line = connection.makefile("rb").readline(MAX_REQUEST)
    try:
        argv = json.loads(line)
    except ValueError:
        return None
    if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
        return None
    return argv


def _run(run_task: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run one task. Flower's task heartbeat raises SIGINT when the SuperNode no longer
    knows the task: that ends the task, never this process."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_task(argv)
    except KeyboardInterrupt:
        print("fedvault: the SuperNode cancelled a ClientApp task", flush=True)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def write_launchers(state_dir: Path, python: str, listen: Path) -> Path:
    """`bin/` in the state dir: the two programs the SuperNode starts by bare name.

    With this directory first on the SuperNode's PATH, `flwr-clientapp` hands each task to
    the site's ClientApp process listening on `listen` (it waits for a process still
    starting, and dies with the SuperExec that started it; it runs without the site's
    packages, on the standard library only), and
    `flower-superexec` is Flower's own, bound to the SuperNode's life: it gets SIGKILL when
    the process that started it dies (cli/processes.py), so a SuperNode killed outright
    leaves no SuperExec polling for tasks. Returns the directory.
    """
    folder = state_dir / "bin"
    clientapp = f"""#!{python} -IS
import ctypes, json, os, signal, socket, sys, time

parent = os.getppid()
try:  # die with the SuperExec that started us, as cli/processes.py arms it
    ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL, 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit(1)
deadline = time.monotonic() + {STARTUP_WAIT_S}
with socket.socket(socket.AF_UNIX) as server:
    try:
        while True:
            try:
                server.connect({str(listen)!r})
                break
            except FileNotFoundError:  # still importing: the socket appears once it is warm
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.sendall(json.dumps(sys.argv[1:]).encode() + b"\\n")
        status = server.makefile("rb").readline().strip()
    except OSError as exc:
        sys.exit(f"flwr-clientapp: the site's ClientApp process is not answering: {{exc}}")
sys.exit(int(status) if status.lstrip(b"-").isdigit() else 1)
"""
    superexec = (
        f"#!{python}\nfrom cli.processes import arm_parent_death_signal, exec_flower\n\n"
        'arm_parent_death_signal()\nexec_flower("flower-superexec")\n'
    )
    atomic_write_text(folder / "flwr-clientapp", clientapp, mode=0o700)
    atomic_write_text(folder / "flower-superexec", superexec, mode=0o700)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("listen", type=Path, help="the Unix socket to listen on")
    serve(parser.parse_args(argv).listen)


if __name__ == "__main__":
    main()
