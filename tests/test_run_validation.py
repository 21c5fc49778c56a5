"""Bad input to `fedvault run` / `register` / `server`: refused before anything is submitted.

No SuperLink is needed: a plain TLS listener on loopback with the federation's server
certificate passes the commands' TLS check, and records whether any request reached it
after the handshake, which is how a submission would start.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from test_deploy_cli import in_process

from cli.run import APP_DIR, check_run
from privacy.certs import init_certificates, new_node_key_pair


class TlsListener:
    """Accepts TLS connections with a server certificate until closed; keeps what arrives."""

    def __init__(self, certs: Path) -> None:
        self.ca = certs / "ca.crt"  # what the commands are given as --ca
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certs / "server.crt", certs / "server.key")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = b""
        self.handshakes = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.handshakes += 1
                    self.received += tls.recv(4096)
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_certificates(root / "certs", "localhost")
    init_certificates(root / "other", "localhost")
    new_node_key_pair(root / "site.key")
    return root


@pytest.fixture()
def listener(pki: Path) -> Iterator[TlsListener]:
    server = TlsListener(pki / "certs")
    yield server
    server.close()


def write_scenario(path: Path, **run: object) -> Path:
    path.write_text(tomli_w.dumps({"run": run}))
    return path


def run_status(out: Path, status: str, run_id: str = "111") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "status.json").write_text(json.dumps({"status": status, "run_id": run_id}))


def refused(listener: TlsListener, *args: str) -> str:
    """`fedvault ARGS` against the listener: exit 2, one line, nothing sent; that line."""
    code, err = in_process(*args, "--server", listener.address, "--ca", str(listener.ca))
    assert code == 2, err
    assert err.startswith("fedvault: error: ") and err.count("\n") == 1, err
    assert listener.received == b"", "something was submitted"
    return err.removeprefix("fedvault: error: ").rstrip("\n")


def test_relative_out_is_refused(listener, tmp_path):
    scenario = write_scenario(tmp_path / "s.toml", out="runs/hospitals")
    assert refused(listener, "run", str(scenario)) == (
        "run setting 'out' must be an absolute path on the server machine, got "
        "'runs/hospitals' (the ServerApp would write it under the SuperLink's working directory)"
    )
    # The app's own default is relative too: a deployment must say where its run goes.
    assert "got 'runs/flwr-run'" in refused(listener, "run")


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ({"num-rounds": "three"}, "setting 'num-rounds': expected int, got 'three'"),
        ({"dp": "sometimes"}, "setting 'dp': expected bool, got 'sometimes'"),
        ({"learning-rate": -1.0}, "learning-rate must be > 0"),
        ({"strategy": "fedsgd"}, "unknown strategy 'fedsgd': choose one of"),
    ],
)
def test_run_config_values_are_checked_as_the_server_would(listener, tmp_path, run, message):
    scenario = write_scenario(tmp_path / "s.toml", out=str(tmp_path / "run"), **run)
    assert refused(listener, "run", str(scenario)).startswith(message)
    assert not (tmp_path / "run").exists()


def test_resume_needs_the_run_the_directory_holds(listener, tmp_path):
    out = tmp_path / "run"
    scenario = str(write_scenario(tmp_path / "s.toml", out=str(out)))
    assert refused(listener, "run", scenario, "--resume", "222") == (
        f"no run to resume in {out} (no readable status.json)"
    )
    run_status(out, "running", "111")
    before = (out / "status.json").read_bytes()
    assert refused(listener, "run", scenario, "--resume", "222") == (
        f"{out} holds run 111, not 222; cannot resume it"
    )
    run_status(out, "completed", "111")
    assert refused(listener, "run", scenario, "--resume", "111") == (
        f"run 111 in {out} already completed; nothing to resume"
    )
    run_status(out, "running", "111")
    assert (out / "status.json").read_bytes() == before


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("completed", "{out} already holds completed run 111; choose another out for a new run"),
        (
            "failed",
            "{out} holds unfinished run 111 (failed); continue it with --resume 111, "
            "or choose another out",
        ),
    ],
)
def test_a_new_run_never_shares_a_run_directory(listener, tmp_path, status, message):
    out = tmp_path / "run"
    run_status(out, status)
    (out / "report.json").write_text("{}")
    scenario = str(write_scenario(tmp_path / "s.toml", out=str(out)))
    assert refused(listener, "run", scenario) == message.format(out=out)
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "status.json"]


def test_a_new_run_refuses_a_directory_with_other_files(listener, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    scenario = str(write_scenario(tmp_path / "s.toml", out=str(out)))
    assert refused(listener, "run", scenario) == (
        f"run directory {out} exists and is not empty; choose another out"
    )


def test_good_runs_pass_the_checks(tmp_path):
    out = tmp_path / "run"
    check_run(APP_DIR, {"out": str(out), "num-rounds": "3"}, None)
    out.mkdir()
    check_run(APP_DIR, {"out": str(out)}, None)
    run_status(out, "running", "111")
    check_run(APP_DIR, {"out": str(out), "resume-run-id": "111"}, "111")


def test_other_apps_keep_their_own_run_config(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        '[tool.flwr.app.components]\nserverapp = "other.server:app"\n'
        '[tool.flwr.app.config]\nout = "relative"\nnum-rounds = "three"\n'
    )
    check_run(app, {}, None)


def test_wrong_ca_is_a_certificate_problem_on_run_and_register(listener, pki, tmp_path):
    other = pki / "other" / "ca.crt"
    expected = (
        f"the server at {listener.address} failed certificate verification against {other}: "
        "unable to get local issuer certificate"
    )
    listener.ca = other
    assert refused(listener, "run") == expected
    assert listener.handshakes == 0  # the listener saw the client abort the handshake
    state = tmp_path / "server"
    state.mkdir()
    record = {"control-address": listener.address, "ca-certificate": str(other)}
    (state / "server.toml").write_text(tomli_w.dumps(record))
    register = (
        "register",
        str(pki / "site.key.pub"),
        "--name",
        "site-a",
        "--state-dir",
        str(state),
    )
    assert refused(listener, *register) == expected
    assert not (state / "sites.toml").exists()


def test_a_ca_file_that_is_not_a_certificate_is_named(listener, pki):
    listener.ca = pki / "site.key"
    assert refused(listener, "run") == f"CA certificate {listener.ca} is not a PEM certificate"
    assert listener.handshakes == 0


@pytest.mark.parametrize("key", ["server.key", "ca.key"])
def test_server_keys_readable_by_others_are_refused(pki, tmp_path, key):
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("ca.crt", "ca.key", "server.crt", "server.key"):
        (certs / name).write_bytes((pki / "certs" / name).read_bytes())
        (certs / name).chmod(0o600)
    (certs / key).chmod(0o640)
    state = tmp_path / "state"
    code, err = in_process("server", "--certs", str(certs), "--state-dir", str(state), "--no-proxy")
    what = "server key" if key == "server.key" else "CA key"
    assert (code, err) == (
        2,
        f"fedvault: error: {what} {certs / key} is accessible by other users (mode 0640); "
        "run chmod 600 on it\n",
    )
    assert not state.exists()
