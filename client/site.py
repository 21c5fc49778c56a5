"""Who this site is and what it decided for itself: state directory, data, budget, policy.

A site's settings come from its own side only: the SuperNode's node config and the
`site.toml` in its state directory. In simulation each virtual site gets a directory
`<sites-root>/site-<partition-id>` written by the simulation runner. Nothing in the server's
round config can raise a site's budget or change its policy.

`dropout-stage` is fault injection for tests and drills: the site vanishes when a request of
that stage reaches it ("train", or a secure-aggregation stage such as "share-keys").
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from privacy.errors import FedVaultError

SITE_FILE = "site.toml"
SITE_KEYS = ("data-path", "policy-path", "max-epsilon", "delta", "dropout-stage")


@dataclass(frozen=True)
class Site:
    """A site's identity and self-owned settings."""

    name: str
    state_dir: Path
    partition_id: int | None = None
    num_partitions: int | None = None
    data_path: str = ""
    policy_path: str = ""
    max_epsilon: float = 0.0
    delta: float = 1e-5
    dropout_stage: str = ""

    @property
    def simulated(self) -> bool:
        return self.partition_id is not None


def resolve_site(node_config: dict, sites_root: str) -> Site:
    """The site for this node: deployed (node config `state-dir`) or simulated (partition id)."""
    if "state-dir" in node_config:
        state_dir = Path(str(node_config["state-dir"]))
        settings = {**read_site_file(state_dir), **_pick(node_config)}
        return Site(name=state_dir.name, state_dir=state_dir, **_typed(settings))
    if "partition-id" not in node_config:
        raise FedVaultError("node config has neither 'state-dir' (deployment) nor 'partition-id'")
    if not sites_root:
        raise FedVaultError("simulation run config lacks 'sites-root'")
    pid = int(node_config["partition-id"])
    state_dir = Path(sites_root) / f"site-{pid}"
    return Site(
        name=f"site-{pid}",
        state_dir=state_dir,
        partition_id=pid,
        num_partitions=int(node_config["num-partitions"]),
        **_typed(read_site_file(state_dir)),
    )


def read_site_file(state_dir: Path) -> dict:
    """The site's own settings file, if it has one."""
    path = state_dir / SITE_FILE
    if not path.exists():
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FedVaultError(f"cannot read site settings {path}: {exc}") from None
    unknown = set(raw) - set(SITE_KEYS)
    if unknown:
        raise FedVaultError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    return raw


def _pick(node_config: dict) -> dict:
    return {k: node_config[k] for k in SITE_KEYS if k in node_config and node_config[k] != ""}


def _typed(settings: dict) -> dict:
    out = {}
    for key, value in settings.items():
        name = key.replace("-", "_")
        try:
            out[name] = float(value) if name in ("max_epsilon", "delta") else str(value)
        except (TypeError, ValueError):
            raise FedVaultError(f"site setting {key!r}: expected a number, got {value!r}") from None
    return out
