"""`fedvault server/register/client/run` with real Flower processes on loopback.

One server (SuperLink with TLS + node authentication, behind the Fleet-only nginx proxy when
nginx is installed) serves the module; a throwaway Flower app stands in for the FedVault
app where a run is submitted. Every key is encrypted at rest, as deployment commands make
them, and the commands find the passphrase in FEDVAULT_PASSPHRASE_FILE; the decrypted copies
Flower's processes read go to a private XDG_RUNTIME_DIR, which the checks watch. Each check
names the behaviour a deployment relies on.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.client import REJOIN_GRACE_S
from cli.main import main
from cli.processes import KEY_DIR_PREFIX, alive, descendants, executable, flower_env
from cli.run import run_overrides
from client.supernode import (
    TASK_POLL_INTERVAL_S,
    node_config,
    resolve_site_settings,
    write_site_settings,
)
from privacy.certs import (
    check_server_certificates,
    init_certificates,
    load_node_public_key,
    new_node_key_pair,
)
from privacy.errors import FedVaultError
from privacy.identity import write_roster
from privacy.keystore import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV
from server.superlink import ServerSettings, https_status, nginx_config

REPO = Path(__file__).resolve().parent.parent
FEDVAULT = [sys.executable, "-m", "cli.main"]
HAS_FLOWER = shutil.which("flower-superlink", path=str(Path(sys.executable).parent)) is not None
HAS_NGINX = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
needs_flower = pytest.mark.skipif(not HAS_FLOWER, reason="flower-superlink (flwr 1.42) not found")
needs_nginx = pytest.mark.skipif(
    not HAS_NGINX, reason="nginx not installed (Debian: apt-get install nginx)"
)
START_TIMEOUT_S = 120
PASSPHRASE = b"loopback deployment passphrase"


def keys_at_rest(root: Path) -> tuple[Path, Path]:
    """A passphrase file (0600) and a private runtime directory for the commands under `root`."""
    secret = root / "passphrase"
    secret.write_bytes(PASSPHRASE + b"\n")
    secret.chmod(0o600)
    runtime = root / "runtime"
    runtime.mkdir(mode=0o700)
    return secret, runtime


@contextlib.contextmanager
def passphrase_environment(secret: Path, runtime: Path) -> Iterator[None]:
    """The environment every command started inside sees: the passphrase file, the runtime
    dir, and a FEDVAULT_HOME of its own (the machine's signing key, encrypted like the rest)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(PASSPHRASE_FILE_ENV, str(secret))
        env.setenv("FEDVAULT_HOME", str(runtime.parent / "fedvault-home"))
        env.delenv(PASSPHRASE_ENV, raising=False)
        env.setenv("XDG_RUNTIME_DIR", str(runtime))
        yield


def decrypted_copies(runtime: Path) -> list[Path]:
    """Decrypted key copies (and their directories) left in a runtime directory."""
    return sorted(runtime.glob(f"{KEY_DIR_PREFIX}*"))


def key_files_read_by(process: Process, flag: str) -> list[Path]:
    """The key files the processes below `process` were started with (`flag` PATH)."""
    found = []
    for pid, _ in descendants(process.proc.pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if flag in argv:
                found.append(Path(argv[argv.index(flag) + 1]))
    return found


def environments_of(process: Process, program: str) -> list[dict[str, str]]:
    """The environments of the processes below `process` whose command line names `program`."""
    found = []
    for pid, _ in descendants(process.proc.pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if any(Path(arg).name == program for arg in argv[:2]):
                raw = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
                found.append(dict(item.split("=", 1) for item in raw if "=" in item))
    return found


GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this process was given before (a test often takes
    several before anything binds them)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in GIVEN_PORTS:
            GIVEN_PORTS.add(port)
            return port


class Process:
    """A `fedvault` command in the background, its output collected line by line.

    Every one started is kept in STARTED: a test that fails between starting a command and
    stopping it must not leave a SuperNode or SuperLink running (see kill_left_running).
    """

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*FEDVAULT, *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        STARTED.append(self)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT_S, also: Process | None = None):
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                context = f"\nalongside:\n{also.output[-4000:]}" if also else ""
                raise AssertionError(f"no {text!r}; output:\n{self.output[-4000:]}{context}")
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM; the exit status. Asserts every process it had started is gone."""
        tree = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        left = [pid for pid, start in tree if alive(pid, start)]
        assert not left, f"processes left running: {left}"
        return code


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a command that still runs and every process it started (its own sessions too)."""
    if proc.poll() is not None:
        return
    tree = descendants(proc.pid)
    proc.kill()
    for pid, start in tree:
        if alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


STARTED: list[Process] = []


@atexit.register
def kill_left_running(since: int = 0) -> None:
    """Kill every Process started after the first `since` that still runs."""
    for process in STARTED[since:]:
        kill_tree(process.proc)


@pytest.fixture(autouse=True)
def no_process_outlives_its_test() -> Iterator[None]:
    """Commands a test of this module starts end with it (module fixtures start earlier)."""
    since = len(STARTED)
    yield
    kill_left_running(since)


def in_process(*args: str, out: io.StringIO | None = None) -> tuple[int, str]:
    """Run `fedvault ARGS` here (commands that supervise no process); (status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out or io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


def fedvault(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `fedvault ARGS` to its end; past `timeout`, kill it and all it started, and fail."""
    proc = subprocess.Popen(
        [*FEDVAULT, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        raise AssertionError(
            f"fedvault {' '.join(args)} ran past {timeout} s:\n{err[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("pki")
    secret, runtime = keys_at_rest(root)
    init_certificates(root / "certs", "localhost", passphrase=PASSPHRASE)
    new_node_key_pair(root / "site1.key", passphrase=PASSPHRASE)
    new_node_key_pair(root / "site2.key", passphrase=PASSPHRASE)
    keys = {name: load_node_public_key(root / f"{name}.key.pub") for name in ("site1", "site2")}
    write_roster(root / "roster.toml", keys)
    with passphrase_environment(secret, runtime):
        yield root


@pytest.fixture(scope="module")
def server(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if not HAS_FLOWER:
        pytest.skip("flower-superlink (flwr 1.42) not found")
    state = tmp_path_factory.mktemp("server")
    port, control = free_port(), free_port()
    args = ["server", "--certs", str(pki / "certs"), "--state-dir", str(state)]
    args += ["--port", str(port), "--control-port", str(control)]
    process = Process([*args] if HAS_NGINX else [*args, "--no-proxy"])
    process.wait_for("server ready")
    fleet = f"127.0.0.1:{port}" if HAS_NGINX else f"127.0.0.1:{control}"
    yield {"state": state, "fleet": fleet, "port": port, "control": control, "process": process}
    assert process.stop() == 0
    assert "warning" not in process.output


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal Flower app whose ServerApp fails when its run config says so."""
    app = tmp_path_factory.mktemp("tinyapp")
    (app / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "tinyapp"\nversion = "1.0.0"\ndescription = "t"\n'
        'license = "Apache-2.0"\ndependencies = []\n'
        '[tool.flwr.app]\npublisher = "fedvaulttest"\n'
        '[tool.flwr.app.components]\nserverapp = "tinyapp.server:app"\n'
        'clientapp = "tinyapp.client:app"\n'
        '[tool.flwr.app.config]\nfail = false\nresume-run-id = ""\n'
    )
    package = app / "tinyapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "server.py").write_text(
        "from flwr.serverapp import ServerApp\napp = ServerApp()\n"
        "@app.main()\ndef main(grid, context):\n"
        "    print('tiny run config', dict(context.run_config))\n"
        "    if context.run_config['fail']:\n        raise RuntimeError('asked to fail')\n"
    )
    (package / "client.py").write_text("from flwr.clientapp import ClientApp\napp = ClientApp()\n")
    return app


def test_registered_site_connects_stops_cleanly_and_can_be_revoked(server, pki, tmp_path):
    register = ("register", str(pki / "site1.key.pub"), "--name", "site1")
    state = ("--state-dir", str(server["state"]))
    assert in_process(*register, *state) == (0, "")
    sites = tomllib.loads((server["state"] / "sites.toml").read_text())["sites"]
    fingerprint = sites["site1"]["fingerprint"]
    assert fingerprint.startswith("SHA256:") and int(sites["site1"]["node-id"]) > 0
    code, err = in_process(*register, *state)
    assert (
        code == 2
        and err == f"fedvault: error: site 'site1' is already registered (key {fingerprint})\n"
    )

    site_dir = tmp_path / "site1"
    client = Process(
        [
            "client", "--state-dir", str(site_dir), "--server", server["fleet"],
            "--ca", str(pki / "certs" / "ca.crt"), "--key", str(pki / "site1.key"),
            "--roster", str(pki / "roster.toml"),
            "--max-epsilon", "3.5", "--delta", "1e-5", "--port", str(free_port()),
            "--threads", "2",
        ]
    )  # fmt: skip
    client.wait_for("site connected", also=server["process"])
    # The SuperNode and the SuperExec it starts (whose ClientApps inherit their environment)
    # poll for tasks at FedVault's interval and pin torch to the site's two threads.
    for program in ("flower-supernode", "flower-superexec"):
        deadline = time.monotonic() + START_TIMEOUT_S
        while not environments_of(client, program) and time.monotonic() < deadline:
            time.sleep(0.2)
        (env,) = environments_of(client, program)
        assert env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == TASK_POLL_INTERVAL_S, program
        assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("2", "2"), program
    assert fingerprint in client.output and "as site1 with key" in client.output
    # The SuperNode was given a decrypted copy in the private runtime directory, gone now
    # that it has read it; the ClientApp gets the passphrase file, never the passphrase.
    (copy,) = key_files_read_by(client, "--auth-supernode-private-key")
    assert copy.parent.parent == pki / "runtime" and not copy.exists()
    assert decrypted_copies(pki / "runtime") == []
    config = tomllib.loads((site_dir / "node-config.toml").read_text())
    assert config == {"state-dir": str(site_dir.resolve())}
    site = tomllib.loads((site_dir / "site.toml").read_text())
    connection = tomllib.loads((site_dir / "supernode.toml").read_text())
    assert connection["threads"] == 2
    assert site == {
        "max-epsilon": 3.5,
        "delta": 1e-5,
        "identity-key": str((pki / "site1.key").resolve()),
    }
    assert (site_dir / "roster.toml").read_bytes() == (pki / "roster.toml").read_bytes()
    assert client.stop() == 0
    assert "site stopped" in client.output

    assert in_process("unregister", "site1", *state)[0] == 0
    assert "site1" not in tomllib.loads((server["state"] / "sites.toml").read_text())["sites"]
    revoked = fedvault("client", "--state-dir", str(site_dir), "--connect-timeout", "120")
    assert revoked.returncode == 2 and "rejected this site's key" in revoked.stderr


def test_a_running_site_whose_key_is_revoked_stops(server, pki, tmp_path):
    """Flower's SuperNode stops on "unauthorized"; the site tries again, then gives up."""
    new_node_key_pair(tmp_path / "site3.key", passphrase=PASSPHRASE)
    write_roster(
        tmp_path / "roster.toml", {"site3": load_node_public_key(tmp_path / "site3.key.pub")}
    )
    state = ("--state-dir", str(server["state"]))
    assert (
        in_process("register", str(tmp_path / "site3.key.pub"), "--name", "site3", *state)[0] == 0
    )
    client = Process(
        [
            "client", "--state-dir", str(tmp_path / "site3"), "--server", server["fleet"],
            "--ca", str(pki / "certs" / "ca.crt"), "--key", str(tmp_path / "site3.key"),
            "--roster", str(tmp_path / "roster.toml"), "--port", str(free_port()),
        ]
    )  # fmt: skip
    client.wait_for("site connected", also=server["process"])
    assert in_process("unregister", "site3", *state)[0] == 0
    started = time.monotonic()
    assert client.proc.wait(timeout=REJOIN_GRACE_S + 120) == 2, client.output[-3000:]
    assert time.monotonic() - started > REJOIN_GRACE_S  # a restarting server had its time
    assert "connecting again" in client.output
    assert client.output.count("fedvault: error:") == 1
    assert "rejected this site's key" in client.output
    assert client.stop() == 2  # and nothing it started is left running


def test_a_restarted_server_lets_in_its_registered_sites_and_no_revoked_one(pki, tmp_path):
    """The SuperLink forgets every node when it stops; `fedvault server` registers again
    exactly the sites of its registry, so a key unregistered before the restart stays out."""
    if not HAS_FLOWER:
        pytest.skip("flower-superlink (flwr 1.42) not found")
    state, port, control = tmp_path / "server", free_port(), free_port()
    args = ["server", "--certs", str(pki / "certs"), "--state-dir", str(state)]
    args += ["--port", str(port), "--control-port", str(control)]
    fleet = f"127.0.0.1:{port if HAS_NGINX else control}"

    def start_server() -> Process:
        process = Process(args if HAS_NGINX else [*args, "--no-proxy"])
        process.wait_for("server ready")
        return process

    server = start_server()
    for name in ("site1", "site2"):
        key = str(pki / f"{name}.key.pub")
        assert in_process("register", key, "--name", name, "--state-dir", str(state))[0] == 0
    assert in_process("unregister", "site2", "--state-dir", str(state))[0] == 0
    assert server.stop() == 0
    server = start_server()
    assert "fedvault: sites registered: site1\n" in server.output
    try:

        def client(name: str, *extra: str) -> list[str]:
            return [
                "client", "--state-dir", str(tmp_path / name), "--server", fleet,
                "--ca", str(pki / "certs" / "ca.crt"), "--key", str(pki / f"{name}.key"),
                "--roster", str(pki / "roster.toml"), "--port", str(free_port()), *extra,
            ]  # fmt: skip

        revoked = fedvault(*client("site2", "--connect-timeout", "120"))
        assert revoked.returncode == 2 and "rejected this site's key" in revoked.stderr
        site = Process(client("site1"))
        site.wait_for("site connected", also=server)
        assert site.stop() == 0
    finally:
        assert server.stop() == 0


def test_unregistered_site_is_rejected(server, pki, tmp_path):
    done = fedvault(
        "client", "--state-dir", str(tmp_path / "site2"), "--server", server["fleet"],
        "--ca", str(pki / "certs" / "ca.crt"), "--key", str(pki / "site2.key"),
        "--roster", str(pki / "roster.toml"), "--port", str(free_port()),
        "--connect-timeout", "120",
    )  # fmt: skip
    assert done.returncode == 2
    assert "rejected this site's key" in done.stderr
    assert done.stderr.count("fedvault: error:") == 1


def test_site_without_tls_is_rejected(server, tmp_path):
    log = tmp_path / "supernode.log"
    command = [
        executable("flower-supernode"), "--insecure",
        "--superlink", server["fleet"], "--port", str(free_port()),
        "--max-retries", "1", "--max-wait-time", "20",
    ]  # fmt: skip
    with log.open("w") as out:
        node = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=flower_env(tmp_path / "flwr")
        )
    tree: set[tuple[int, int]] = set()
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while node.poll() is None and time.monotonic() < deadline:
            tree.update(descendants(node.pid))
            time.sleep(0.2)
    finally:
        node.kill()
        for pid, start in tree:
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)
    assert node.wait() not in (0, -signal.SIGKILL), log.read_text()
    assert "SuperNode ID" not in log.read_text()


@needs_nginx
def test_exposed_address_serves_fleet_only(server, pki):
    ca = pki / "certs" / "ca.crt"
    port = server["port"]
    for path in (
        "/v1/control/start-run",
        "/v1/control/register-node",
        "/v1/runtime/pull-task-input",
        "/health",
        "/docs",
        "/v1/fleet/..%2fcontrol/start-run",
        "/v1/fleet/%2e%2e/control/start-run",
        "/v1/fleet/get-run/../../control/start-run",
    ):
        assert https_status("127.0.0.1", port, ca, "POST", path) == 403, path
    assert https_status("127.0.0.1", port, ca, "GET", "/v1/fleet/get-run") == 403
    assert https_status("127.0.0.1", port, ca, "POST", "/v1/fleet/get-run") == 415
    assert https_status("127.0.0.1", server["control"], ca, "POST", "/v1/control/start-run") == 415


@needs_nginx
def test_exposed_address_refuses_run_submission(server, pki, tiny_app):
    out = io.StringIO()
    code, err = in_process(
        "run", "--server", server["fleet"], "--ca", str(pki / "certs" / "ca.crt"),
        "--app", str(tiny_app), out=out,
    )  # fmt: skip
    assert code == 2
    assert "403 Forbidden" in err and "does not serve the Control API" in err
    assert "started run" not in out.getvalue()


def test_loopback_control_address_runs_and_reports_failure(server, tiny_app, tmp_path):
    out = io.StringIO()
    target = ("--state-dir", str(server["state"]), "--app", str(tiny_app))
    assert in_process("run", *target, out=out) == (0, "")
    assert "finished:completed" in out.getvalue()
    scenario = tmp_path / "fail.toml"
    scenario.write_text("[run]\nfail = true\n")
    code, err = in_process("run", str(scenario), *target)
    assert code == 1
    assert "finished:failed" in err and "asked to fail" in err


def test_second_server_on_a_used_port_is_a_one_line_error(server, pki, tmp_path):
    code, err = in_process(
        "server", "--certs", str(pki / "certs"), "--state-dir", str(tmp_path / "s"),
        "--control-port", str(server["control"]), "--no-proxy",
    )  # fmt: skip
    assert code == 2
    assert (
        err.startswith(f"fedvault: error: cannot listen on 127.0.0.1:{server['control']}:")
        and err.count("\n") == 1
    )


@needs_flower
def test_server_sigterm_stops_every_process(pki, tmp_path):
    args = ["server", "--certs", str(pki / "certs"), "--state-dir", str(tmp_path / "state")]
    args += ["--port", str(free_port()), "--control-port", str(free_port())]
    process = Process(args if HAS_NGINX else [*args, "--no-proxy"])
    process.wait_for("server ready")
    # SuperLink and nginx read one decrypted copy of server.key, removed once both were ready.
    (copy,) = key_files_read_by(process, "--ssl-keyfile")
    assert copy.parent.parent == pki / "runtime" and not copy.exists()
    if HAS_NGINX:
        nginx_conf = (tmp_path / "state" / "proxy" / "nginx.conf").read_text()
        assert f"ssl_certificate_key {copy};" in nginx_conf
    assert decrypted_copies(pki / "runtime") == []
    commands = [
        Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        for pid, _ in descendants(process.proc.pid)
    ]
    assert any("flower-superlink" in c for c in commands)
    assert any("flower-superexec" in c for c in commands)
    assert any(c.startswith("nginx") for c in commands) == bool(HAS_NGINX)
    assert process.stop() == 0
    assert "server stopped" in process.output


@needs_flower
def test_site_key_copy_is_gone_once_the_supernode_has_read_it_and_stop_leaves_none(pki, tmp_path):
    """Against a server that is not there: the SuperNode read its key and waits to connect."""
    client = Process(
        [
            "client", "--state-dir", str(tmp_path / "site"), "--server", f"127.0.0.1:{free_port()}",
            "--ca", str(pki / "certs" / "ca.crt"), "--key", str(pki / "site2.key"),
            "--roster", str(pki / "roster.toml"), "--port", str(free_port()),
            "--connect-timeout", "0",
        ]
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (copies := key_files_read_by(client, "--auth-supernode-private-key")) or any(
        copy.exists() for copy in copies
    ):
        assert client.proc.poll() is None and time.monotonic() < deadline, client.output
        time.sleep(0.2)
    assert [copy.parent.parent for copy in copies] == [pki / "runtime"]
    assert "site connected" not in client.output
    assert client.stop() == 130 and "fedvault: interrupted" in client.output
    assert decrypted_copies(pki / "runtime") == []


def test_server_start_errors_name_the_problem(pki, tmp_path):
    code, err = in_process("server", "--certs", str(tmp_path / "no"), "--state-dir", str(tmp_path))
    assert code == 2 and "certificate directory not found" in err
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "ca.crt").write_bytes((pki / "certs" / "ca.crt").read_bytes())
    code, err = in_process("server", "--certs", str(partial), "--state-dir", str(tmp_path / "s"))
    assert code == 2 and "server certificate not found" in err
    assert not (tmp_path / "s").exists()


def test_proxy_config_forwards_only_fleet_posts(pki, tmp_path):
    certs = check_server_certificates(pki / "certs")
    settings = ServerSettings(certs, tmp_path / "s", "0.0.0.0", 9443, 9444)
    config = nginx_config(settings, tmp_path / "decrypted" / "server.key", tmp_path / "sockets")
    assert f"ssl_certificate_key {tmp_path / 'decrypted' / 'server.key'};" in config
    assert "listen 0.0.0.0:9443 ssl;" in config
    assert "server 127.0.0.1:9444;" in config
    assert "limit_except POST { deny all; }" in config
    assert "proxy_ssl_verify on;" in config
    assert "location / {\n            return 403;" in config
    # Pulls and pushes go to the long-poll process, the rest of Fleet to the SuperLink; nginx
    # takes the first regular expression that matches, so the long-poll one comes first.
    longpoll = (
        "location ~ ^(/v1/fleet/pull-messages|/v1/fleet/push-messages|/v1/fleet/push-object)$"
    )
    fleet = "location ~ ^/v1/fleet/[a-z-]+$"
    assert config.index(longpoll) < config.index(fleet)
    assert f"proxy_pass http://unix:{tmp_path / 'sockets' / 'fleet.sock'}:;" in config
    assert config.count("proxy_pass") == 2
    # nginx's unprivileged workers could not write a request body to the root-owned temp
    # dir: bodies are streamed, in every location (set once, for the whole server)
    assert config.count("proxy_request_buffering off;") == 1
    assert config.index("proxy_request_buffering off;") < config.index(longpoll)


def test_site_settings_persist_and_command_line_wins(pki, tmp_path):
    state = tmp_path / "site"
    state.mkdir()
    (state / "site.toml").write_text('dropout-stage = "kept"\nmin-noise-multiplier = 0.8\n')
    connection = {
        "server": "fl.example.org:9443",
        "ca": str(pki / "certs" / "ca.crt"),
        "key": str(pki / "site1.key"),
    }
    first = resolve_site_settings(state, {"max-epsilon": 2.0, "delta": 1e-6}, **connection)
    write_site_settings(state, first)
    assert stat.S_IMODE((state / "site.toml").stat().st_mode) == 0o600
    saved = tomllib.loads((state / "site.toml").read_text())
    assert saved == {
        "max-epsilon": 2.0,
        "delta": 1e-6,
        "dropout-stage": "kept",
        "min-noise-multiplier": 0.8,
    }
    again = resolve_site_settings(state, {"max-epsilon": 1.0, "require-secagg": False})
    assert again.server == "fl.example.org:9443" and again.site["max-epsilon"] == 1.0
    assert again.site["delta"] == 1e-6 and again.key == str((pki / "site1.key").resolve())
    assert again.site["require-secagg"] is False
    assert node_config(state) == {"state-dir": str(state)}


@pytest.mark.parametrize(
    ("change", "site", "message"),
    [
        ({"server": None}, {}, "missing --server"),
        ({"server": "no-port"}, {}, "HOST:PORT"),
        ({"ca": "missing.crt"}, {}, "CA certificate not found"),
        ({"threads": 0}, {}, "--threads must be between 1 and 1024, got 0"),
        ({"port": 70000}, {}, "--port must be between 1 and 65535"),
        ({}, {"max-epsilon": -1.0}, "max-epsilon must be > 0"),
        ({}, {"delta": 1.5}, r"delta must be in \(0, 1\)"),
        ({}, {"data-path": "missing.csv"}, "data file not found"),
        ({}, {"min-noise-multiplier": -0.5}, "min-noise-multiplier must be >= 0"),
        ({}, {"max-epsilon": 2.0, "max-epsilon-per-round": 3.0}, "above the site's whole budget"),
        ({}, {"require-dp": False, "max-epsilon": 2.0}, "contradicts require-dp = false"),
        ({}, {"insecure-seed": 3}, "for simulated sites only"),
    ],
)
def test_bad_site_settings_are_named(pki, tmp_path, change, site, message):
    given = {
        "server": "fl.example.org:9443",
        "ca": str(pki / "certs" / "ca.crt"),
        "key": str(pki / "site1.key"),
        **change,
    }
    with pytest.raises(FedVaultError, match=message):
        resolve_site_settings(tmp_path, site, **given)


def test_unknown_site_setting_in_site_toml_is_named(pki, tmp_path):
    (tmp_path / "site.toml").write_text("max-epsilon = 2.0\nmax-epsilonn = 3.0\n")
    with pytest.raises(FedVaultError, match="unknown site setting 'max-epsilonn'"):
        resolve_site_settings(
            tmp_path, {}, server="a:1", ca=str(pki / "certs" / "ca.crt"), key=str(pki / "site1.key")
        )


def test_cli_refuses_a_contradictory_floor_and_writes_nothing(pki, tmp_path):
    state = tmp_path / "s"
    code, err = in_process(
        "client", "--state-dir", str(state), "--server", "127.0.0.1:1",
        "--ca", str(pki / "certs" / "ca.crt"), "--key", str(pki / "site1.key"),
        "--max-epsilon", "1", "--max-epsilon-per-round", "2",
    )  # fmt: skip
    assert code == 2
    assert err.count("\n") == 1 and "max-epsilon-per-round 2 is above" in err
    assert not state.exists()


def test_node_key_readable_by_others_is_refused(pki, tmp_path):
    key = tmp_path / "open.key"
    key.write_bytes((pki / "site1.key").read_bytes())
    key.chmod(0o644)
    code, err = in_process(
        "client", "--state-dir", str(tmp_path / "s"), "--server", "127.0.0.1:1",
        "--ca", str(pki / "certs" / "ca.crt"), "--key", str(key),
    )  # fmt: skip
    assert code == 2 and "accessible by other users (mode 0644)" in err
    assert not (tmp_path / "s").exists()


def test_run_overrides_check_keys_against_the_app(tiny_app, tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text("[simulation]\nnum-sites = 3\n[run]\nfail = true\n")
    assert run_overrides(tiny_app, str(scenario), "123") == {"fail": True, "resume-run-id": "123"}
    scenario.write_text("[run]\nbogus = 1\n")
    with pytest.raises(FedVaultError, match="'bogus' is not declared"):
        run_overrides(tiny_app, str(scenario), None)
    with pytest.raises(FedVaultError, match="--resume needs a run id"):
        run_overrides(tiny_app, None, "last")


@pytest.mark.parametrize(
    ("command", "phrases"),
    [
        ("server", ("--certs", "--state-dir", "Fleet API", "Ctrl-C or SIGTERM")),
        ("client", ("--server", "--ca", "--key", "--max-epsilon", "never by the server")),
        ("run", ("SCENARIO", "--resume", "exit 0 only if the run finished successfully")),
    ],
)
def test_help_explains_each_command(command, phrases, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in phrases:
        assert phrase in text, phrase


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "say where the server is: --state-dir"),
        (["run", "--state-dir", "{tmp}/none"], "server record (start `fedvault server`"),
        (["run", "--server", "nohost", "--ca", "{ca}"], "not a HOST:PORT address: 'nohost'"),
        (["run", "--server", "127.0.0.1:1", "--ca", "{tmp}/no.crt"], "CA certificate not found"),
        (
            ["run", "--server", "127.0.0.1:1", "--ca", "{ca}"],
            "cannot reach the server's Control API at 127.0.0.1:1",
        ),
        (
            ["client", "--state-dir", "{tmp}/s", "--server", "127.0.0.1:1", "--ca", "{ca}",
             "--key", "{tmp}/no.key"],
            "node key not found",
        ),
        (
            ["client", "--state-dir", "{tmp}/s", "--server", "127.0.0.1:1", "--ca", "{key}",
             "--key", "{key}"],
            "is not a PEM certificate",
        ),
        (
            ["client", "--state-dir", "{tmp}/s", "--server", "127.0.0.1:1", "--ca", "{ca}",
             "--key", "{key}.pub"],
            "not a private key in PEM or OpenSSH format",
        ),
        (["register", "{tmp}/no.pub", "--name", "x", "--state-dir", "{tmp}"], "not found"),
    ],
)  # fmt: skip
def test_bad_paths_and_addresses_are_one_line_errors(pki, tmp_path, args, message):
    values = {"tmp": tmp_path, "ca": pki / "certs" / "ca.crt", "key": pki / "site1.key"}
    code, err = in_process(*(arg.format(**values) for arg in args))
    assert code == 2
    assert err.startswith("fedvault: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "s").exists()
