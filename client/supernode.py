"""A site's side of a deployment: its settings, and Flower's SuperNode started from them.

What a site trains on and how much privacy it may spend are the site's decisions, so they
live in the site's own state directory, never in anything the server sends. Two files keep
them across restarts: `site.toml` (data, policy, budget, privacy floor: the keys
client/site.py validates) and `supernode.toml` (how to reach the server: address, CA, key,
local port). The SuperNode's node config, written to `node-config.toml` (Flower reads a
`.toml` path given to `--node-config`, so no path is ever quoted on a command line), names
only the state directory.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from client.site import SITE_FILE, read_site_file, site_settings
from privacy.atomic import atomic_write_text
from privacy.certs import fingerprint, load_certificate, load_node_private_key, parse_address
from privacy.errors import FedVaultError
from privacy.identity import ROSTER_FILE, Identity, Roster

CONNECTION_FILE = "supernode.toml"
NODE_CONFIG_FILE = "node-config.toml"
DEFAULT_CLIENT_PORT = 9094
CONNECTED_MARK = "SuperNode ID:"
REJECTED_MARKS = ("Failed to activate SuperNode", "All SuperNodes must be registered")


@dataclass(frozen=True)
class SiteSettings:
    """A site's persistent settings: how it reaches the server, and its own `site.toml` keys.

    `site` holds validated site keys (client/site.py); paths in it are absolute.
    """

    server: str
    ca: str
    key: str
    port: int = DEFAULT_CLIENT_PORT
    site: dict[str, Any] = field(default_factory=dict)


CONNECTION_FIELDS = ("server", "ca", "key", "port")
PATH_KEYS = {"data-path": "data file", "policy-path": "policy file"}


def read_site_settings(state_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved connection settings and site keys ({} and {} before the first start)."""
    path = state_dir / CONNECTION_FILE
    connection: dict[str, Any] = {}
    if path.exists():
        try:
            with path.open("rb") as fh:
                connection = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise FedVaultError(f"cannot read {path}: {exc}") from None
        unknown = sorted(set(connection) - set(CONNECTION_FIELDS))
        if unknown:
            raise FedVaultError(f"{path}: unknown setting {unknown[0]!r}")
    return connection, read_site_file(state_dir)


def write_site_settings(state_dir: Path, settings: SiteSettings) -> None:
    """Save both files atomically (0600) so the next start needs only --state-dir."""
    connection = {name: getattr(settings, name) for name in CONNECTION_FIELDS}
    atomic_write_text(state_dir / CONNECTION_FILE, tomli_w.dumps(connection), mode=0o600)
    atomic_write_text(state_dir / SITE_FILE, tomli_w.dumps(settings.site), mode=0o600)


def _existing_file(value: str, what: str) -> str:
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise FedVaultError(f"{what} not found: {path}")
    if not os.access(path, os.R_OK):
        raise FedVaultError(f"{what} is not readable: {path}")
    return str(path)


def _check_private(path: str) -> None:
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & 0o077:
        raise FedVaultError(
            f"node key {path} is accessible by other users (mode {mode:04o}); run chmod 600 on it"
        )


def resolve_site_settings(
    state_dir: Path, site: dict[str, Any] | None = None, **connection: object
) -> SiteSettings:
    """Merge command-line values over the saved ones and validate the result.

    `connection` holds server, ca, key and port; `site` holds site keys (`data-path`,
    `max-epsilon`, ...). None means "not given, keep the saved value".
    """
    saved_connection, saved_site = read_site_settings(state_dir)
    merged = {**saved_connection, **{k: v for k, v in connection.items() if v is not None}}
    missing = [f"--{k}" for k in ("server", "ca", "key") if merged.get(k) is None]
    if missing:
        raise FedVaultError(
            f"missing {', '.join(missing)} (needed on the first start, then saved in "
            f"{state_dir / CONNECTION_FILE})"
        )
    given = {k: v for k, v in (site or {}).items() if v is not None}
    keys = site_settings({**saved_site, **given}, str(state_dir / SITE_FILE), simulated=False)
    for key, what in PATH_KEYS.items():
        if key in keys:
            keys[key] = _existing_file(keys[key], what)
    port = merged.get("port", DEFAULT_CLIENT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise FedVaultError(f"--port must be between 1 and 65535, got {port!r}")
    parse_address(str(merged["server"]))
    ca = _existing_file(str(merged["ca"]), "CA certificate")
    load_certificate(ca, "CA certificate")
    key = _existing_file(str(merged["key"]), "node key")
    load_node_private_key(key)
    _check_private(key)
    return SiteSettings(str(merged["server"]), ca, key, port, keys)


def site_roster(state_dir: Path, roster: str | None, key: str) -> tuple[Identity, Path]:
    """The site's identity under the given roster (or its saved copy), and that roster file.

    Without a roster there is no authenticated secure aggregation and no name for the site,
    so a deployed site refuses to start without one. Nothing is written here.
    """
    source = Path(_existing_file(roster, "roster")) if roster else state_dir / ROSTER_FILE
    if not source.exists():
        raise FedVaultError(
            "this site has no roster: pass --roster ROSTER, the federation roster from the "
            "coordinator (check every fingerprint in it with its site, as for ca.crt)"
        )
    return Identity.of(load_node_private_key(key), Roster.load(source)), source


def keep_roster(state_dir: Path, source: Path) -> None:
    """The site's own copy of the roster, which only the site's operator replaces."""
    target = state_dir / ROSTER_FILE
    if source.resolve() != target.resolve():
        atomic_write_text(target, source.read_text(encoding="utf-8"), mode=0o644)


def write_clientapp_launcher(state_dir: Path, python: str) -> Path:
    """`bin/flwr-clientapp` in the state dir, running the site's own ClientApp process.

    Flower starts each ClientApp process by the bare name `flwr-clientapp`; with this
    directory first on the SuperNode's PATH that is client/app_process.py, which serves
    only approved builds, with the site's installed code. Returns the directory.
    """
    folder = state_dir / "bin"
    script = f"#!{python}\nfrom client.app_process import main\n\nmain()\n"
    atomic_write_text(folder / "flwr-clientapp", script, mode=0o700)
    return folder


def key_fingerprint(settings: SiteSettings) -> str:
    """The SHA256 fingerprint of the site's public key (what the coordinator registered)."""
    return fingerprint(load_node_private_key(settings.key).public_key())


def node_config(state_dir: Path) -> dict[str, object]:
    """The node config the ClientApp receives: only where the site's state lives.

    Everything else the site decided is read from its `site.toml` there, so one file holds
    the site's settings and one validator checks them.
    """
    return {"state-dir": str(state_dir)}


def write_node_config(state_dir: Path) -> Path:
    """Write `node-config.toml` for `flower-supernode --node-config`."""
    path = state_dir / NODE_CONFIG_FILE
    atomic_write_text(path, tomli_w.dumps(node_config(state_dir)), mode=0o600)
    return path


def supernode_command(settings: SiteSettings, node_config_path: Path, executable: str) -> list[str]:
    """`flower-supernode` with TLS, node authentication and the site's node config."""
    return [
        executable,
        "--superlink", settings.server,
        "--root-certificates", settings.ca,
        "--auth-supernode-private-key", settings.key,
        "--node-config", str(node_config_path),
        "--host", "127.0.0.1",
        "--port", str(settings.port),
    ]  # fmt: skip
