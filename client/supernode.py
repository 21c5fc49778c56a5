"""A site's side of a deployment: its settings, and Flower's SuperNode started from them.

What a site trains on and how much privacy it may spend are the site's decisions, so they
live in the site's own state directory, never in anything the server sends. Two files keep
them across restarts: `site.toml` (data, policy, budget, privacy floor: the keys
client/site.py validates) and `supernode.toml` (how to reach the server: address, CA, key,
local port). The SuperNode's node config, written to `node-config.toml` (Flower reads a
`.toml` path given to `--node-config`, so no path is ever quoted on a command line), names
only the state directory. The node key may be encrypted (privacy/keystore.py): every read
here takes the passphrase, and the SuperNode itself is given a decrypted copy.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from client.site import SITE_FILE, read_site_file, site_settings
from privacy.atomic import atomic_write_text
from privacy.certs import load_certificate, load_node_private_key, parse_address
from privacy.errors import FedVaultError
from privacy.identity import ROSTER_FILE, Identity, Roster

CONNECTION_FILE = "supernode.toml"
NODE_CONFIG_FILE = "node-config.toml"
DEFAULT_CLIENT_PORT = 9094
DEFAULT_THREADS = 1
TASK_POLL_INTERVAL_S = "0.2"
"""How often the SuperNode's SuperExec looks for a task. Flower's 1 s would add up to a
second to every stage; each look is a request between two Python processes, so at 50 ms an
idle site spent 13 % of a core on them (4 % at 0.2 s), and three sites on one 2-core
machine made deployed rounds 17 % slower (docs/benchmarks.md)."""
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
    threads: int = DEFAULT_THREADS
    site: dict[str, Any] = field(default_factory=dict)


CONNECTION_FIELDS = ("server", "ca", "key", "port", "threads")
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


def resolve_site_settings(
    state_dir: Path,
    site: dict[str, Any] | None = None,
    *,
    passphrase: bytes | None = None,
    **connection: object,
) -> SiteSettings:
    """Merge command-line values over the saved ones and validate the result.

    `connection` holds server, ca, key and port; `site` holds site keys (`data-path`,
    `max-epsilon`, ...). None means "not given, keep the saved value". The node key must
    open (under `passphrase`, else the environment's) and be the owner's alone.
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
    threads = merged.get("threads", DEFAULT_THREADS)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 < threads <= 1024:
        raise FedVaultError(f"--threads must be between 1 and 1024, got {threads!r}")
    parse_address(str(merged["server"]))
    ca = _existing_file(str(merged["ca"]), "CA certificate")
    load_certificate(ca, "CA certificate")
    key = _existing_file(str(merged["key"]), "node key")
    load_node_private_key(key, passphrase)
    return SiteSettings(str(merged["server"]), ca, key, port, threads, keys)


def supernode_env(settings: SiteSettings, env: dict[str, str]) -> dict[str, str]:
    """`env` for the SuperNode, whose SuperExec and ClientApp processes inherit it.

    Each message a site answers is a fresh ClientApp process: the SuperExec looks for it
    every TASK_POLL_INTERVAL_S (unless the operator set FLWR_SUPEREXEC_TASK_POLL_INTERVAL),
    and torch gets the site's thread count, since torch's default of one thread per core
    oversubscribes a machine that runs several sites or other work.
    """
    threads = str(settings.threads)
    return {
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": TASK_POLL_INTERVAL_S,
        **env,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }


def site_roster(
    state_dir: Path, roster: str | None, key: str, passphrase: bytes | None = None
) -> tuple[Identity, Path]:
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
    return Identity.of(load_node_private_key(key, passphrase), Roster.load(source)), source


def keep_roster(state_dir: Path, source: Path) -> None:
    """The site's own copy of the roster, which only the site's operator replaces."""
    target = state_dir / ROSTER_FILE
    if source.resolve() != target.resolve():
        atomic_write_text(target, source.read_text(encoding="utf-8"), mode=0o644)


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


def supernode_command(
    settings: SiteSettings, node_config_path: Path, executable: str, key_file: Path
) -> list[str]:
    """`flower-supernode` with TLS, node authentication and the site's node config.

    `key_file` is the node key as the SuperNode reads it: unencrypted OpenSSH (a decrypted
    copy of an encrypted key, see cli/processes.py).
    """
    return [
        executable,
        "--superlink", settings.server,
        "--root-certificates", settings.ca,
        "--auth-supernode-private-key", str(key_file),
        "--node-config", str(node_config_path),
        "--host", "127.0.0.1",
        "--port", str(settings.port),
    ]  # fmt: skip
