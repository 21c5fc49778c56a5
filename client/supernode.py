"""A site's side of a deployment: its settings, and Flower's SuperNode started from them.

What a site trains on and how much privacy it may spend are the site's decisions, so they
live in the site's own state directory and reach the ClientApp through the SuperNode's
node config, never through the server. Two files keep them across restarts:
`site.toml` (data, policy, budget: the keys client/site.py reads) and `supernode.toml`
(how to reach the server: address, CA, key, local port). The node config is written to
`node-config.toml` (Flower reads a `.toml` path given to `--node-config`), so no path is
ever quoted on a command line. Its keys: `state-dir`, `data-path`, `policy-path`,
`max-epsilon`, `delta`.
"""

from __future__ import annotations

import math
import os
import stat
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import tomli_w

from client.site import SITE_FILE, SITE_KEYS, read_site_file
from privacy.atomic import atomic_write_text
from privacy.certs import fingerprint, load_certificate, load_node_private_key, parse_address
from privacy.errors import FedVaultError

CONNECTION_FILE = "supernode.toml"
NODE_CONFIG_FILE = "node-config.toml"
DEFAULT_CLIENT_PORT = 9094
CONNECTED_MARK = "SuperNode ID:"
REJECTED_MARKS = ("Failed to activate SuperNode", "All SuperNodes must be registered")


@dataclass(frozen=True)
class SiteSettings:
    """A site's persistent settings; paths are absolute once resolved."""

    server: str
    ca: str
    key: str
    port: int = DEFAULT_CLIENT_PORT
    data_path: str | None = None
    policy_path: str | None = None
    max_epsilon: float | None = None
    delta: float | None = None
    other: dict = field(default_factory=dict)
    """Further `site.toml` keys this command does not set (kept as they are)."""


def _key(name: str) -> str:
    return name.replace("_", "-")


CONNECTION_FIELDS = ("server", "ca", "key", "port")
SITE_FIELDS = tuple(f.name for f in fields(SiteSettings) if _key(f.name) in SITE_KEYS)


def read_site_settings(state_dir: Path) -> dict:
    """A site's saved settings as a field -> value dict ({} before the first start)."""
    path = state_dir / CONNECTION_FILE
    saved: dict = {}
    if path.exists():
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise FedVaultError(f"cannot read {path}: {exc}") from None
        unknown = sorted(set(raw) - {_key(name) for name in CONNECTION_FIELDS})
        if unknown:
            raise FedVaultError(f"{path}: unknown setting {unknown[0]!r}")
        saved.update(raw)
    site = read_site_file(state_dir)
    managed = {_key(name) for name in SITE_FIELDS}
    saved.update({k: v for k, v in site.items() if k in managed})
    settings = {name.replace("-", "_"): value for name, value in saved.items()}
    settings["other"] = {k: v for k, v in site.items() if k not in managed}
    return settings


def write_site_settings(state_dir: Path, settings: SiteSettings) -> None:
    """Save both files atomically (0600) so the next start needs only --state-dir."""
    values = {_key(k): v for k, v in asdict(settings).items() if v is not None}
    for file, names, other in (
        (CONNECTION_FILE, CONNECTION_FIELDS, {}),
        (SITE_FILE, SITE_FIELDS, settings.other),
    ):
        table = {**other, **{_key(n): values[_key(n)] for n in names if _key(n) in values}}
        atomic_write_text(state_dir / file, tomli_w.dumps(table), mode=0o600)


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


def _typed(name: str, value: object) -> object:
    kind = {"port": int, "max_epsilon": float, "delta": float}.get(name, str)
    if kind is not str and isinstance(value, bool | str):
        raise FedVaultError(f"site setting {_key(name)!r}: expected a number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise FedVaultError(f"site setting {_key(name)!r}: bad value {value!r}") from None


def resolve_site_settings(state_dir: Path, **given: object) -> SiteSettings:
    """Merge command-line values over the saved ones and validate the result.

    `given` holds SiteSettings fields; None means "not given, keep the saved value".
    """
    merged = {**read_site_settings(state_dir), **{k: v for k, v in given.items() if v is not None}}
    missing = [f"--{k}" for k in ("server", "ca", "key") if merged.get(k) is None]
    if missing:
        raise FedVaultError(
            f"missing {', '.join(missing)} (needed on the first start, then saved in "
            f"{state_dir / CONNECTION_FILE})"
        )
    other = merged.pop("other", {})
    settings = SiteSettings(
        **{name: _typed(name, value) for name, value in merged.items()}, other=other
    )
    parse_address(settings.server)
    ca = _existing_file(settings.ca, "CA certificate")
    load_certificate(ca, "CA certificate")
    key = _existing_file(settings.key, "node key")
    load_node_private_key(key)
    _check_private(key)
    data = _existing_file(settings.data_path, "data file") if settings.data_path else None
    policy = _existing_file(settings.policy_path, "policy file") if settings.policy_path else None
    if settings.max_epsilon is not None and not (
        math.isfinite(settings.max_epsilon) and settings.max_epsilon > 0
    ):
        raise FedVaultError(f"--max-epsilon must be a positive number, got {settings.max_epsilon}")
    if settings.delta is not None and not 0 < settings.delta < 1:
        raise FedVaultError(f"--delta must be between 0 and 1 (exclusive), got {settings.delta}")
    if not 0 < settings.port < 65536:
        raise FedVaultError(f"--port must be between 1 and 65535, got {settings.port}")
    return replace(settings, ca=ca, key=key, data_path=data, policy_path=policy)


def key_fingerprint(settings: SiteSettings) -> str:
    """The SHA256 fingerprint of the site's public key (what the coordinator registered)."""
    return fingerprint(load_node_private_key(settings.key).public_key())


def node_config(state_dir: Path, settings: SiteSettings) -> dict[str, object]:
    """The node config the ClientApp receives (the contract keys; unset ones left out)."""
    config: dict[str, object] = {"state-dir": str(state_dir)}
    optional = {
        "data-path": settings.data_path,
        "policy-path": settings.policy_path,
        "max-epsilon": settings.max_epsilon,
        "delta": settings.delta,
    }
    config.update({k: v for k, v in optional.items() if v is not None})
    return config


def write_node_config(state_dir: Path, settings: SiteSettings) -> Path:
    """Write `node-config.toml` for `flower-supernode --node-config`."""
    path = state_dir / NODE_CONFIG_FILE
    atomic_write_text(path, tomli_w.dumps(node_config(state_dir, settings)), mode=0o600)
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
