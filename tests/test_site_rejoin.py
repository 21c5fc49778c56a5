"""cli.client.SiteNode: a SuperNode that stops is started again, within limits.

A stand-in for `flower-supernode` plays what the real one does after a server restart
(it connects, then stops when the new SuperLink refuses its node) and after a revocation
(its key is refused at start). The real one is in tests/test_deploy_cli.py and
tests/test_deployment_e2e.py, at the cost of a server each.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import client as site_cli
from cli import processes
from cli.client import KeyRejected, SiteNode
from cli.processes import Supervisor
from client.supernode import SiteSettings
from privacy.errors import FedVaultError

STAND_IN = """\
import socket, sys, time
from pathlib import Path
state = Path(sys.argv[0]).with_name("mode")
mode = state.read_text()
port = int(sys.argv[sys.argv.index("--port") + 1])
if mode == "refused-once":
    state.write_text("stays")
if mode.startswith("refused"):
    print("Failed to activate SuperNode", flush=True)
    sys.exit(1)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
print("SuperNode ID: 7", flush=True)
time.sleep(0.5 if mode == "stops" else 600)
"""


@pytest.fixture(autouse=True)
def no_subreaper(monkeypatch):
    monkeypatch.setattr(processes, "become_subreaper", lambda: None)


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> Path:
    program = tmp_path / "flower-supernode"
    program.write_text(f"#!{sys.executable}\n{STAND_IN}")
    program.chmod(0o755)
    monkeypatch.setattr(site_cli, "executable", lambda name: str(program))
    return tmp_path / "mode"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def site_node(supervisor: Supervisor, tmp_path: Path) -> SiteNode:
    settings = SiteSettings(server="127.0.0.1:1", ca="ca.crt", key="node.key", port=free_port())
    return SiteNode(
        supervisor,
        settings,
        dict(os.environ),
        tmp_path / "node-config.toml",
        lambda: tmp_path / "node.key",
        "SHA256:test",
        timeout=30,
    )


@contextlib.contextmanager
def stopped_node(stand_in: Path, tmp_path: Path) -> Iterator[tuple[Supervisor, SiteNode]]:
    """A SiteNode whose SuperNode connected, then stopped (as after a server restart)."""
    stand_in.write_text("stops")
    with Supervisor() as supervisor:
        node = site_node(supervisor, tmp_path)
        node.start()
        assert supervisor.wait_for_exit_or_signal() is node.child
        yield supervisor, node


def test_a_stopped_supernode_is_started_again_until_it_stops_too_often(stand_in, tmp_path):
    with stopped_node(stand_in, tmp_path) as (supervisor, node):
        first = node.child
        for _ in range(site_cli.MAX_REJOINS):
            node.rejoin()
            assert node.child is not first and node.child.exited() is None
            assert [c.name for c in supervisor.children] == ["supernode"]
            assert supervisor.wait_for_exit_or_signal() is node.child
        with pytest.raises(FedVaultError, match=r"stopped 6 times within 600 s"):
            node.rejoin()


def test_a_key_refused_after_a_stop_is_tried_again_then_reported(stand_in, tmp_path, monkeypatch):
    monkeypatch.setattr(site_cli, "REJOIN_GRACE_S", 1.0)
    monkeypatch.setattr(site_cli, "REJOIN_PAUSE_S", 0.1)
    with stopped_node(stand_in, tmp_path) as (supervisor, node):
        stand_in.write_text("refused")
        started = time.monotonic()
        with pytest.raises(KeyRejected, match="rejected this site's key SHA256:test"):
            node.rejoin()
        assert time.monotonic() - started >= 1.0
        assert all(child.exited() is not None for child in supervisor.children)


def test_a_key_refused_for_a_moment_joins_again(stand_in, tmp_path, monkeypatch):
    """A server mid-start (registering its sites again) refuses a key it will know."""
    monkeypatch.setattr(site_cli, "REJOIN_PAUSE_S", 0.1)
    with stopped_node(stand_in, tmp_path) as (supervisor, node):
        stand_in.write_text("refused-once")
        node.rejoin()
        assert stand_in.read_text() == "stays"  # refused once, then connected
        assert node.child.exited() is None and "SuperNode ID" in node.child.last_lines()
        assert [c.name for c in supervisor.children] == ["supernode"]
