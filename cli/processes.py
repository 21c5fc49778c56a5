"""Supervise Flower's long-running processes so that stopping FedVault stops all of them.

`flower-superlink` and `flower-supernode` spawn helpers of their own (`flower-superexec`, which
spawns the ServerApp/ClientApp processes), some in new sessions, and those only notice a
vanished parent by polling. So each child starts in its own process group, this process
becomes a child subreaper (orphaned descendants are re-parented here, not to init), and
stopping sends SIGTERM to every group, waits, then SIGKILLs whatever descendant is left.
If this process itself is killed outright (SIGKILL, OOM killer), nothing can run here:
each direct child is then sent SIGKILL by the kernel (Linux parent-death signal), and
Flower's own helpers notice their vanished parent, so no SuperLink or nginx keeps holding
the ports. Children's output is streamed line by line with a name prefix.

Flower's SuperLink and SuperNode, and nginx, read their private keys from files and know no
passphrase. The supervisor hands them decrypted copies (`key_file`) in a private directory,
on a memory file system where there is one, and removes them once the children have read
them (`remove_key_files`, after readiness) or, at the latest, when it stops, whatever the
reason (an error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives import serialization

from privacy.certs import format_address
from privacy.errors import FedVaultError
from privacy.keystore import unencrypted_copy

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_GRACE_S = 10.0
CRASH_MARK = "Traceback (most recent call last):"
CRASH_GRACE_S = 10.0
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
}
MEMORY_DIRS = ("/dev/shm",)
"""Tried after $XDG_RUNTIME_DIR for decrypted key copies: memory, never written to a disk."""
KEY_DIR_PREFIX = "fedvault-keys-"
SOCKET_DIR_PREFIX = "fedvault-sockets-"


def executable(name: str) -> str:
    """Absolute path of a console script installed beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FedVaultError(f"{name} not found (is flwr 1.42 installed in this environment?)")
    return found


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """Environment for a Flower process: offline settings, this Python's bin dir on PATH.

    Flower starts `flower-superexec` and the app processes by bare name, so they must be on
    PATH even when FedVault was launched without activating its virtual environment.
    """
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def check_port_free(host: str, port: int) -> None:
    """A FedVaultError naming the address when something already listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise FedVaultError(
                f"cannot listen on {format_address(host, port)}: {exc.strerror}"
            ) from None


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def accepting(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


def private_key_dir(fallback: Path) -> Path:
    """A new directory only this user may enter (0700): under $XDG_RUNTIME_DIR or /dev/shm,
    memory file systems, where one is writable; else under `fallback` (a state directory)."""
    bases = [os.environ.get("XDG_RUNTIME_DIR", ""), *MEMORY_DIRS]
    for base in bases:
        if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            return Path(tempfile.mkdtemp(prefix=KEY_DIR_PREFIX, dir=base))
    try:
        fallback.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(prefix=f".{KEY_DIR_PREFIX}", dir=fallback))
    except OSError as exc:
        raise FedVaultError(
            f"cannot create a private directory in {fallback}: {exc.strerror}"
        ) from None


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def _process_table() -> dict[int, list[tuple[int, str, int]]]:
    """Parent pid -> [(pid, state, start time)] for every process in /proc."""
    table: dict[int, list[tuple[int, str, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            table.setdefault(stat[0], []).append((int(entry), stat[1], stat[2]))
    return table


def descendants(root: int) -> list[tuple[int, int]]:
    """Every live (non-zombie) descendant of `root` as (pid, start time)."""
    table = _process_table()
    found: list[tuple[int, int]] = []
    pending = [root]
    while pending:
        for pid, state, start in table.get(pending.pop(), []):
            if state != "Z":
                found.append((pid, start))
            pending.append(pid)
    return found


def alive(pid: int, start_time: int) -> bool:
    """Whether the process `pid` that started at `start_time` still runs (not a zombie)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[1] != "Z" and stat[2] == start_time


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux); a no-op where prctl is unavailable."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGKILL when this process dies (Linux).

    None where prctl is unavailable.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    return lambda: _arm_death_signal(prctl, parent)


def arm_parent_death_signal() -> None:
    """SIGKILL for this process when the one that started it dies (Linux; else a no-op).

    For programs Flower starts itself (the SuperNode's SuperExec, its ClientApps), whose
    own watch on their parent can be late or stuck; the setting survives an exec.
    """
    prctl = _prctl()
    if prctl is not None:
        _arm_death_signal(prctl, os.getppid())


def _prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _arm_death_signal(prctl: Callable[..., int], parent: int) -> None:
    """Arm the signal; the check after it covers a parent that died just before (the
    process would otherwise never get the signal)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def exec_flower(program: str) -> None:
    """Replace this process with Flower's `program` from this environment, same arguments."""
    path = executable(program)
    os.execv(path, [path, *sys.argv[1:]])


@dataclass
class Child:
    """One supervised process and the tail of its output."""

    name: str
    process: subprocess.Popen
    lines: deque = field(default_factory=lambda: deque(maxlen=200))
    lock: threading.Lock = field(default_factory=threading.Lock)
    pump: threading.Thread | None = None

    def exited(self) -> int | None:
        return self.process.poll()

    def output(self) -> list[str]:
        """The last lines the process wrote (up to 200)."""
        with self.lock:
            return list(self.lines)

    def last_lines(self, count: int = 5) -> str:
        return " | ".join(line.strip() for line in self.output()[-count:] if line.strip())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class Supervisor:
    """Start named processes, stream their output, and stop every one of them on exit.

    Use it as a context manager: inside, SIGTERM and SIGHUP raise KeyboardInterrupt like
    SIGINT does, so any way of stopping FedVault unwinds through `stop()`.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.children: list[Child] = []
        self._out_lock = threading.Lock()
        self._previous: dict[int, object] = {}
        self._key_dir: Path | None = None
        self._socket_dir: Path | None = None

    def __enter__(self) -> Supervisor:
        become_subreaper()
        self._previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
        for sig in self.SIGNALS:
            signal.signal(sig, _interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            try:
                self.remove_key_files()
            finally:
                self.stop()
                if self._socket_dir is not None:
                    shutil.rmtree(self._socket_dir, ignore_errors=True)
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def key_file(
        self,
        path: Path,
        what: str,
        passphrase: bytes | None,
        plain_format: serialization.PrivateFormat,
        fallback: Path,
    ) -> Path:
        """Where a child that knows no passphrase reads the key at `path`: the file itself if
        it is stored unencrypted, else a decrypted copy (0600, in `private_key_dir(fallback)`)
        that lives until `remove_key_files`, or until this supervisor exits."""
        data = unencrypted_copy(path, what, passphrase, plain_format)
        if data is None:
            return path
        if self._key_dir is None:
            self._key_dir = private_key_dir(fallback)
        copy = self._key_dir / path.name
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return copy

    def socket_dir(self) -> Path:
        """A directory only this user may enter (0700), for the Unix sockets of the children,
        removed once they are stopped. It is in the system's temporary directory, whose
        short path fits a socket address (108 bytes) where a deep state directory may not."""
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX))
        return self._socket_dir

    def remove_key_files(self) -> None:
        """Remove every decrypted key copy: call it once every child that reads one is ready
        (it has read it then and never reads it again)."""
        if self._key_dir is not None:
            shutil.rmtree(self._key_dir)
            self._key_dir = None

    def _pump(self, child: Child) -> None:
        assert child.process.stdout is not None
        for line in child.process.stdout:
            with child.lock:
                child.lines.append(line)
            with self._out_lock:
                self.out.write(f"[{child.name}] {line}")
                self.out.flush()

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        """Start `argv` in a new process group; its output is streamed as `[name] line`."""
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=dict(env),
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        child = Child(name, process)
        self.children.append(child)
        child.pump = threading.Thread(target=self._pump, args=(child,), daemon=True)
        child.pump.start()
        return child

    def forget(self, child: Child) -> None:
        """Stop watching `child`, which has exited (to start its like again)."""
        self.children.remove(child)
        if child.pump is not None:
            child.pump.join(timeout=2)

    def wait_until(
        self,
        child: Child,
        ready: Callable[[], bool],
        timeout: float,
        what: str,
        on_exit: Callable[[Child], FedVaultError] | None = None,
    ) -> None:
        """Poll `ready()` until true; a FedVaultError if `child` exits or time runs out.

        A `timeout` of 0 or less waits without limit. A child that printed a Python
        traceback and is neither ready nor gone `CRASH_GRACE_S` later counts as crashed:
        Flower's SuperNode, for one, keeps running on a non-daemon HTTP thread after its
        main thread dies, and would otherwise hold the wait until `timeout`.
        """
        deadline = time.monotonic() + timeout
        crashed_at: float | None = None
        while not ready():
            code = child.exited()
            if code is not None:
                if child.pump is not None:
                    child.pump.join(timeout=2)
                if on_exit is not None:
                    raise on_exit(child)
                raise FedVaultError(
                    f"{child.name} exited with status {code} before {what}: {child.last_lines()}"
                )
            if crashed_at is None and any(line.startswith(CRASH_MARK) for line in child.output()):
                crashed_at = time.monotonic()
            if crashed_at is not None and time.monotonic() - crashed_at > CRASH_GRACE_S:
                raise FedVaultError(
                    f"{child.name} crashed before {what} and did not exit: {child.last_lines()}"
                )
            if timeout > 0 and time.monotonic() > deadline:
                raise FedVaultError(f"{child.name}: no {what} after {timeout:.0f} s")
            time.sleep(0.2)

    def wait_for_exit_or_signal(self) -> Child | None:
        """Block until a child exits (returned) or a stop signal arrives (None)."""
        try:
            while True:
                for child in self.children:
                    if child.exited() is not None:
                        return child
                time.sleep(0.2)
        except KeyboardInterrupt:
            return None

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM every child's group, wait up to `grace` s, then SIGKILL any leftover."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        me = os.getpid()
        own = {child.process.pid for child in self.children}
        tree = descendants(me)
        for child in self.children:
            if child.exited() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        while any(alive(p, s) for p, s in tree) and time.monotonic() < deadline:
            _reap_orphans(own)
            time.sleep(0.1)
        for pid, start in {*tree, *descendants(me)}:
            if alive(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)
            if child.pump is not None:
                child.pump.join(timeout=2)
        time.sleep(0.1)
        _reap_orphans(own)


def _reap_orphans(own: set[int]) -> None:
    """Collect adopted orphans that exited (zombie children that are not in `own`)."""
    for pid, state, _ in _process_table().get(os.getpid(), []):
        if state == "Z" and pid not in own:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
