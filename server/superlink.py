"""The coordinator's side of a deployment: Flower's SuperLink behind a Fleet-only proxy.

In Flower 1.42 one `flower-superlink` HTTPS port serves three APIs: Fleet (`/v1/fleet/`,
what sites use), Control (`/v1/control/`: submit, stop and list runs, register nodes; no
authentication in the open-source build) and Runtime (`/v1/runtime/`, for the ServerApp
process). The deprecated `--fleet-api-address` / `--control-api-address` flags no longer
split them. So the SuperLink listens on loopback only, and sites reach it through nginx,
which terminates TLS with the same server certificate and forwards only POSTs to
`/v1/fleet/<method>` (re-encrypted to the SuperLink, its certificate verified against the
CA). A site can still only speak Fleet, and Fleet still checks its registered key; nothing
else is reachable from the network. Runs and registrations go to the loopback control
address, from the server machine itself (or an SSH tunnel).

Here: the SuperLink and nginx command lines and config, readiness probes, the server's
state record (`server.toml`), and the `flwr` CLI calls for the Control API with a
throwaway `FLWR_HOME` that names only this SuperLink.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from privacy.atomic import atomic_write_text
from privacy.certs import (
    CertificatePaths,
    check_server_certificates,
    fingerprint,
    format_address,
    load_certificate,
    load_node_public_key,
    openssh_public_key,
    parse_address,
    verify_tls_server,
)
from privacy.errors import FedVaultError
from server.longpoll import FLEET, PATHS

DEFAULT_PORT = 9443
DEFAULT_CONTROL_PORT = 9444
LOOPBACK = "127.0.0.1"
FLEET_LOCATION = r"^/v1/fleet/[a-z-]+$"
READINESS_PROBE_PATH = "/v1/fleet/fedvault-readiness-probe"
MAX_REQUEST_BODY = "64m"
SERVER_RECORD = "server.toml"
SITES_RECORD = "sites.toml"
CONNECTION = "fedvault"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
FLWR_TIMEOUT_S = 120
IN_MEMORY_STATE = ":flwr-in-memory:"
"""Flower's name for its in-memory SuperLink state (`flwr.supercore.constant`)."""


@dataclass(frozen=True)
class ServerSettings:
    """Everything `fedvault server` needs to start the SuperLink (and the proxy)."""

    certs: CertificatePaths
    state_dir: Path
    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    control_port: int = DEFAULT_CONTROL_PORT
    proxy: bool = True

    @property
    def control_address(self) -> str:
        return f"{LOOPBACK}:{self.control_port}"

    @property
    def fleet_address(self) -> str:
        """The address sites use: the proxy's, or the SuperLink's own without a proxy."""
        return format_address(self.host, self.port) if self.proxy else self.control_address

    @property
    def proxy_dir(self) -> Path:
        return self.state_dir / "proxy"


def prepare_server(
    certs_dir: str | Path,
    state_dir: str | Path,
    host: str = LOOPBACK,
    port: int = DEFAULT_PORT,
    control_port: int = DEFAULT_CONTROL_PORT,
    proxy: bool = True,
    passphrase: bytes | None = None,
) -> ServerSettings:
    """Validate certificates (the server key decrypted under `passphrase`, else the
    environment's, if encrypted) and tools; create the state dir; return the settings."""
    certs = check_server_certificates(Path(certs_dir).resolve(), passphrase)
    settings = ServerSettings(certs, Path(state_dir).resolve(), host, port, control_port, proxy)
    if proxy and shutil.which("nginx", path=_nginx_search_path()) is None:
        raise FedVaultError(
            "nginx not found: install it (Debian: apt-get install nginx) or pass --no-proxy "
            "to keep the server on loopback only"
        )
    if proxy and (host, port) == (LOOPBACK, control_port):
        raise FedVaultError("--port and --control-port must differ")
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return settings


def transport_record(settings: ServerSettings) -> dict[str, object]:
    """What `fedvault server` starts the SuperLink with, for the runs to record."""
    return {
        "tls": True,
        "node-authentication": True,
        "fleet-only-proxy": settings.proxy,
        "source": "recorded by `fedvault server`, which started the SuperLink with TLS "
        f"(CA {settings.certs.ca_cert}) and SuperNode authentication",
    }


def _nginx_search_path() -> str:
    """PATH plus the sbin directories, where Debian installs nginx."""
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def superlink_command(settings: ServerSettings, executable: str, key_file: Path) -> list[str]:
    """`flower-superlink` with TLS, node authentication, in-memory state, loopback only.

    `key_file` is the server key as the SuperLink can read it: unencrypted (a decrypted copy
    of an encrypted server.key, see cli/processes.py). Flower's SQL state costs every Fleet
    and Runtime call a database round through SQLAlchemy, the largest part of a deployed
    round's time; what must outlive the SuperLink is FedVault's own record instead: the
    sites (`reregister_sites`) and each run's checkpoint (its run directory).
    """
    certs = settings.certs
    return [
        executable,
        "--ssl-ca-certfile", str(certs.ca_cert),
        "--ssl-certfile", str(certs.server_cert),
        "--ssl-keyfile", str(key_file),
        "--enable-supernode-auth",
        "--database", IN_MEMORY_STATE,
        "--disable-runtime-dependency-installation",
        "--host", LOOPBACK,
        "--port", str(settings.control_port),
    ]  # fmt: skip


def nginx_config(settings: ServerSettings, key_file: Path, sockets: Path) -> str:
    """An nginx config that exposes only the Fleet API of the loopback SuperLink.

    `key_file` is the unencrypted server key, which nginx reads once at start (and on a
    reload, which FedVault never asks for). Pulls and pushes go to the long-poll process's
    socket in `sockets` (server/longpoll.py), every other Fleet call to the SuperLink.
    """
    proxy_dir = settings.proxy_dir
    certs = settings.certs
    listen = format_address(settings.host, settings.port)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = {kind: proxy_dir / "tmp" / kind for kind in kinds}
    return f"""# Written by `fedvault server`; rewritten at every start.
# Sites may reach the Fleet API only; Control and Runtime APIs stay on loopback.
worker_processes 1;
pid {proxy_dir / "nginx.pid"};
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    access_log /dev/stdout;
    server_tokens off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    upstream superlink {{
        server {settings.control_address};
        keepalive 16;
    }}
    server {{
        listen {listen} ssl;
        ssl_certificate {certs.server_cert};
        ssl_certificate_key {key_file};
        ssl_protocols TLSv1.2 TLSv1.3;
        client_max_body_size {MAX_REQUEST_BODY};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_request_buffering off;
        proxy_max_temp_file_size 0;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;
        location ~ ^({"|".join(PATHS)})$ {{
            limit_except POST {{ deny all; }}
            proxy_pass http://unix:{sockets / FLEET}:;
        }}
        location ~ {FLEET_LOCATION} {{
            limit_except POST {{ deny all; }}
            proxy_pass https://superlink$uri;
            proxy_ssl_trusted_certificate {certs.ca_cert};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
        }}
        location / {{
            return 403;
        }}
    }}
}}
"""


def longpoll_command(settings: ServerSettings, sockets: Path) -> list[str]:
    """The long-poll process beside the proxy, with its sockets in `sockets`.

    nginx started as root runs its workers as an unprivileged user, so `sockets` becomes
    0711 (enter, not list) for them to reach the two sockets they use
    (server/longpoll.py); the ServerApp's sockets there stay the owner's alone.
    """
    sockets.chmod(0o711)
    return [
        sys.executable, "-m", "server.longpoll",
        "--upstream", settings.control_address,
        "--ca", str(settings.certs.ca_cert),
        "--sockets", str(sockets),
    ]  # fmt: skip


def nginx_command(settings: ServerSettings, key_file: Path, sockets: Path) -> list[str]:
    """Write the proxy config under the state dir; the nginx command line that uses it."""
    nginx = shutil.which("nginx", path=_nginx_search_path())
    if nginx is None:
        raise FedVaultError("nginx not found: install it (Debian: apt-get install nginx)")
    (settings.proxy_dir / "tmp").mkdir(parents=True, exist_ok=True, mode=0o700)
    config = settings.proxy_dir / "nginx.conf"
    atomic_write_text(config, nginx_config(settings, key_file, sockets), mode=0o600)
    return [nginx, "-p", str(settings.proxy_dir), "-c", str(config), "-g", "daemon off;"]


def https_status(
    host: str, port: int, ca_cert: Path, method: str, path: str, timeout: float = 3.0
) -> int | None:
    """HTTP status of one bodiless request over verified TLS; None if no answer.

    The certificate is checked against `ca_cert` for the name `localhost`, which every
    FedVault server certificate carries, so any listening address can be probed.
    """
    context = ssl.create_default_context(cafile=str(ca_cert))
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(request)
            status_line = tls.makefile("rb").readline().decode("ascii", "replace")
    except (OSError, ssl.SSLError):
        return None
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def superlink_ready(settings: ServerSettings) -> bool:
    """The SuperLink answers its health check on the loopback control address."""
    status = https_status(LOOPBACK, settings.control_port, settings.certs.ca_cert, "GET", "/health")
    return status == 200


def _probe_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return LOOPBACK
    return "::1" if host == "::" else host


def proxy_ready(settings: ServerSettings) -> bool:
    """A Fleet-shaped request through the proxy reaches the SuperLink.

    The path matches the proxy's Fleet rule but no Fleet method, so only the SuperLink
    itself answers 404 (the proxy answers 403 or 502): this proves the whole chain, TLS at
    the proxy, the Fleet rule, TLS from the proxy to the SuperLink, without an error log.
    """
    status = https_status(
        _probe_host(settings.host),
        settings.port,
        settings.certs.ca_cert,
        "POST",
        READINESS_PROBE_PATH,
    )
    return status == 404


def write_server_record(settings: ServerSettings) -> Path:
    """Record where this server's control API is, for `fedvault register` and `run`."""
    record = {
        "control-address": settings.control_address,
        "fleet-address": settings.fleet_address,
        "ca-certificate": str(settings.certs.ca_cert),
        "proxy": settings.proxy,
    }
    path = settings.state_dir / SERVER_RECORD
    atomic_write_text(path, tomli_w.dumps(record), mode=0o600)
    return path


def read_toml(path: Path, what: str) -> dict:
    """A TOML file as a dict; a missing or malformed file is a FedVaultError naming it."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise FedVaultError(f"{what} not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FedVaultError(f"cannot read {what} {path}: {exc}") from None


@dataclass(frozen=True)
class ControlTarget:
    """Where to reach a SuperLink's Control API, and the CA that vouches for it."""

    address: str
    ca_cert: Path


def control_target(
    server: str | None = None, ca: str | Path | None = None, state_dir: str | Path | None = None
) -> ControlTarget:
    """Resolve the Control API address and CA from flags or the server's `server.toml`."""
    record: dict = {}
    if state_dir is not None:
        record = read_toml(
            Path(state_dir) / SERVER_RECORD,
            "server record (start `fedvault server` with this --state-dir first)",
        )
    address = server or record.get("control-address")
    ca_path = ca or record.get("ca-certificate")
    if address is None or ca_path is None:
        raise FedVaultError(
            "say where the server is: --state-dir SERVER_STATE_DIR (on the server machine) "
            "or both --server HOST:PORT and --ca CA_CERT"
        )
    parse_address(address)
    ca_file = Path(ca_path).resolve()
    if not ca_file.is_file():
        raise FedVaultError(f"CA certificate not found: {ca_file}")
    load_certificate(ca_file, "CA certificate")
    return ControlTarget(address, ca_file)


class FlwrControl:
    """The `flwr` CLI pointed at one SuperLink's Control API, and nothing else.

    A context manager: inside, a private temporary FLWR_HOME holds a single connection,
    so the user's own `~/.flwr` is neither read nor changed. Entering it first shakes hands
    with the server over TLS: `flwr` reports a certificate the CA does not vouch for as an
    unavailable connection, which would send the user looking for a server that is running.
    """

    def __init__(self, target: ControlTarget, flwr: str, env: Mapping[str, str]) -> None:
        self.target = target
        self.flwr = flwr
        self.base_env = dict(env)
        self._home: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> FlwrControl:
        if not verify_tls_server(self.target.address, self.target.ca_cert):
            raise FedVaultError(_unreachable(self.target.address))
        self._home = tempfile.TemporaryDirectory(prefix="fedvault-flwr-")
        config = {
            "superlink": {
                "default": CONNECTION,
                CONNECTION: {
                    "address": self.target.address,
                    "root-certificates": str(self.target.ca_cert),
                },
            }
        }
        Path(self._home.name, "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._home is not None:
            self._home.cleanup()

    @property
    def env(self) -> dict[str, str]:
        assert self._home is not None, "use FlwrControl as a context manager"
        return {**self.base_env, "FLWR_HOME": self._home.name}

    def json(self, args: Sequence[str], timeout: float = FLWR_TIMEOUT_S) -> dict:
        """Run `flwr ARGS --format json`; its answer, or a FedVaultError with its reason.

        `flwr` exits 0 even when a command failed in JSON mode; `success` says what happened.
        """
        try:
            done = subprocess.run(
                [self.flwr, *args, "--format", "json"],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise FedVaultError(f"flwr {args[0]} gave no answer within {timeout:.0f} s") from None
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise FedVaultError(
                f"flwr {args[0]} failed (status {done.returncode}): "
                f"{detail[-1] if detail else 'no output'}"
            ) from None
        if not answer.get("success"):
            raise FedVaultError(f"flwr {args[0]}: {flwr_error(answer, self.target.address)}")
        return answer

    def register_node(self, public_key: Path, name: str) -> str:
        """Register a public key; the SuperLink's node id for it."""
        answer = self.json(
            ["supernode", "register", str(public_key.resolve()), CONNECTION, "--name", name]
        )
        return str(answer["node-id"])

    def unregister_node(self, node_id: str) -> None:
        """Remove a node: its key can no longer connect."""
        self.json(["supernode", "unregister", node_id, CONNECTION])

    def start_run(self, app_dir: Path, run_config: Path | None) -> str:
        """Submit the app in `app_dir` (overrides from a TOML file); the new run's id."""
        args = ["run", str(app_dir), CONNECTION]
        if run_config is not None:
            args += ["--run-config", str(run_config)]
        return str(self.json(args)["run-id"])

    def stream_logs(self, run_id: str) -> int:
        """Print the run's log as it grows, until the run ends; flwr's exit status."""
        return subprocess.run(
            [self.flwr, "log", run_id, CONNECTION, "--stream"],
            env=self.env,
            stdin=subprocess.DEVNULL,
        ).returncode

    def run_status(self, run_id: str) -> tuple[str, str]:
        """(status, details) of a run, e.g. ("finished:failed", "ServerApp failed ...")."""
        runs = self.json(["ls", CONNECTION, "--run-id", run_id])["runs"]
        if not runs:
            raise FedVaultError(f"run {run_id} not found on the server")
        return str(runs[0]["status"]), str(runs[0].get("status-details", ""))


def flwr_error(answer: Mapping, address: str = "") -> str:
    """The informative last line of a failed `flwr` JSON answer (`address`: where it went)."""
    lines = [
        line.strip()
        for line in str(answer.get("error-message", "unknown error")).splitlines()
        if line.strip() and not line.startswith(("Using SuperLink", "For more information"))
    ]
    message = lines[-1] if lines else "unknown error"
    if "403 Forbidden" in message:
        message += (
            " (this address does not serve the Control API: use the server's loopback "
            "control address, e.g. with --state-dir on the server machine)"
        )
    if "Connection to the SuperLink is unavailable" in message:
        message = _unreachable(address or "the given address")
    return message


def _unreachable(address: str) -> str:
    return (
        f"cannot reach the server's Control API at {address}: is `fedvault server` running, "
        "and is this its --control-port?"
    )


@dataclass(frozen=True)
class SiteRecord:
    """A registered site: its name, node id and key fingerprint."""

    name: str
    node_id: str
    fingerprint: str
    public_key: str
    registered_at: str


def read_sites(state_dir: str | Path) -> dict[str, SiteRecord]:
    """Sites registered through this server's state dir, by name."""
    path = Path(state_dir) / SITES_RECORD
    if not path.exists():
        return {}
    sites = read_toml(path, "site registry").get("sites", {})
    return {
        name: SiteRecord(
            name, row["node-id"], row["fingerprint"], row["public-key"], row["registered-at"]
        )
        for name, row in sites.items()
    }


def _write_sites(state_dir: Path, sites: Mapping[str, SiteRecord]) -> None:
    table = {
        name: {
            "node-id": s.node_id,
            "fingerprint": s.fingerprint,
            "public-key": s.public_key,
            "registered-at": s.registered_at,
        }
        for name, s in sorted(sites.items())
    }
    atomic_write_text(state_dir / SITES_RECORD, tomli_w.dumps({"sites": table}), mode=0o600)


def register_site(
    public_key: str | Path,
    name: str,
    state_dir: str | Path,
    flwr: str,
    env: Mapping[str, str],
    server: str | None = None,
    ca: str | Path | None = None,
) -> SiteRecord:
    """Register a site's public key with the SuperLink; record name -> fingerprint."""
    if not SITE_NAME.match(name):
        raise FedVaultError(
            f"bad site name {name!r}: use up to 63 letters, digits, '.', '_' or '-'"
        )
    key = load_node_public_key(public_key)
    state = Path(state_dir)
    sites = read_sites(state)
    if name in sites:
        raise FedVaultError(f"site {name!r} is already registered (key {sites[name].fingerprint})")
    key_print = fingerprint(key)
    for other in sites.values():
        if other.fingerprint == key_print:
            raise FedVaultError(f"this key is already registered as site {other.name!r}")
    with FlwrControl(control_target(server, ca, state), flwr, env) as control:
        node_id = control.register_node(Path(public_key), name)
    record = SiteRecord(
        name=name,
        node_id=node_id,
        fingerprint=key_print,
        public_key=openssh_public_key(key).decode("ascii"),
        registered_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    _write_sites(state, {**sites, name: record})
    return record


def reregister_sites(settings: ServerSettings, flwr: str, env: Mapping[str, str]) -> list[str]:
    """Register every site of the registry with a SuperLink that has just started.

    The SuperLink's state is in memory (`superlink_command`): it starts knowing no node.
    Call this before sites can reach it (before the proxy starts), so that a site's
    SuperNode never finds its key unknown. Each site gets a new node id, recorded in the
    registry; the names of the sites registered.
    """
    sites = read_sites(settings.state_dir)
    if not sites:
        return []
    target = ControlTarget(settings.control_address, settings.certs.ca_cert)
    renewed = {}
    with (
        FlwrControl(target, flwr, env) as control,
        tempfile.TemporaryDirectory(prefix="fedvault-keys-") as keys,
    ):
        for name, site in sorted(sites.items()):
            key = Path(keys) / f"{name}.pub"
            key.write_text(site.public_key + "\n", encoding="ascii")
            renewed[name] = dataclasses.replace(site, node_id=control.register_node(key, name))
    _write_sites(settings.state_dir, renewed)
    return sorted(renewed)


def unregister_site(
    name: str,
    state_dir: str | Path,
    flwr: str,
    env: Mapping[str, str],
    server: str | None = None,
    ca: str | Path | None = None,
) -> SiteRecord:
    """Revoke a registered site's key at the SuperLink and drop it from the registry."""
    state = Path(state_dir)
    sites = read_sites(state)
    if name not in sites:
        known = ", ".join(sorted(sites)) or "none"
        raise FedVaultError(f"no registered site {name!r} (registered: {known})")
    with FlwrControl(control_target(server, ca, state), flwr, env) as control:
        control.unregister_node(sites[name].node_id)
    _write_sites(state, {k: v for k, v in sites.items() if k != name})
    return sites[name]
