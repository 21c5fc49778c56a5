"""Who this site is and what it decided for itself: data, budget, privacy floor, policy.

A site's settings come from its own side only: the `site.toml` in its state directory (written
by `fedvault client`, or by the simulation runner from a scenario's `[sites]` table) and the
SuperNode's node config. The coordinator's round config can ask for more privacy than the
floor, never for less: DP-SGD, a minimum noise, a maximum epsilon per round, secure
aggregation and whether evaluation requests are answered at all are the site's to decide.
Every key is validated here, once, by `site_settings`, for all three sources.

`dropout-stage` is fault injection for tests and drills: the site vanishes when a request of
that stage reaches it ("train", or a secure-aggregation stage such as "share-keys").
`insecure-seed` makes a simulated site's randomness (DP noise, Poisson sampling, its split)
follow from a seed, for reproducible research; it voids the guarantee, the report says so,
and a deployed site refuses it.
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from privacy.certs import load_node_private_key
from privacy.errors import FedVaultError
from privacy.identity import ROSTER_FILE, Identity, Roster

SITE_FILE = "site.toml"
DEFAULT_MAX_EPSILON = 10.0
DEFAULT_DELTA = 1e-5
DEFAULT_EVALUATION_NOISE = 20.0
IDENTITY_KEY_FILE = "node.key"

# key -> (type, description): the whole site.toml vocabulary.
SITE_KEYS: dict[str, tuple[type, str]] = {
    "data-path": (str, "the site's training data (CSV)"),
    "policy-path": (str, "the site's anonymization policy"),
    "dataset-id": (str, "the identity its privacy ledger is kept for (default: data-path)"),
    "max-epsilon": (float, "total privacy budget over every run on this data"),
    "delta": (float, "delta of the budget"),
    "require-dp": (bool, "refuse training without DP-SGD (default true)"),
    "min-noise-multiplier": (float, "refuse a DP-SGD noise multiplier below this"),
    "max-epsilon-per-round": (float, "refuse a round that alone costs more epsilon"),
    "min-client-noise-multiplier": (
        float,
        "client-level DP: refuse a run whose client-level noise multiplier is below this",
    ),
    "require-secagg": (bool, "refuse plain train requests (default: true when deployed)"),
    "allow-evaluation": (bool, "answer evaluation requests, DP-noised and accounted"),
    "evaluation-noise-multiplier": (float, "noise multiplier of each evaluation release"),
    "allow-distributed-dp": (
        bool,
        "take part in distributed DP-SGD, where the noise is complete only in the sum",
    ),
    "tolerated-colluders": (
        int,
        "distributed DP: refuse runs whose noise shares assume fewer sites colluding",
    ),
    "public-record-count": (
        bool,
        "declare the number of records public (sent, and used as weight)",
    ),
    "roster": (str, "the federation roster (default: roster.toml in the state directory)"),
    "identity-key": (str, "the site's identity key (default: node.key in the state directory)"),
    "min-secagg-peers": (int, "refuse secure aggregation with fewer authenticated peers"),
    "insecure-seed": (
        int,
        "simulation only: noise, sampling and split follow from it: NOT private",
    ),
    "dropout-stage": (str, "fault injection: leave at this stage"),
}


@dataclass(frozen=True)
class PrivacyFloor:
    """The least privacy this site accepts from any request."""

    require_dp: bool = True
    min_noise_multiplier: float = 0.0
    max_epsilon_per_round: float = 0.0
    require_secagg: bool = False
    allow_evaluation: bool = False
    evaluation_noise_multiplier: float = DEFAULT_EVALUATION_NOISE
    allow_distributed_dp: bool = True
    tolerated_colluders: int = 0
    min_client_noise_multiplier: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return {key.replace("_", "-"): value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class Site:
    """A site's identity and self-owned settings."""

    name: str
    state_dir: Path
    partition_id: int | None = None
    num_partitions: int | None = None
    data_path: str = ""
    policy_path: str = ""
    dataset_id: str = ""
    max_epsilon: float = DEFAULT_MAX_EPSILON
    delta: float = DEFAULT_DELTA
    floor: PrivacyFloor = field(default_factory=PrivacyFloor)
    public_record_count: bool = False
    insecure_seed: int | None = None
    dropout_stage: str = ""
    roster_path: str = ""
    identity_key_path: str = ""
    min_secagg_peers: int = 1

    @property
    def simulated(self) -> bool:
        return self.partition_id is not None

    def dataset_identity(self, task_name: str) -> str:
        """What this site's ledger is kept for: its declared dataset id, else its data source."""
        if self.dataset_id:
            return self.dataset_id
        if self.data_path:
            return str(Path(self.data_path).resolve())
        if self.simulated:
            return f"simulated {task_name} partition"
        raise FedVaultError(f"{self.name}: set data-path or dataset-id in its {SITE_FILE}")


def _typed(key: str, value: Any, where: str) -> Any:
    kind = SITE_KEYS[key][0]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise FedVaultError(f"{where}: {key} must be true or false, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise FedVaultError(f"{where}: {key} must be a string, got {value!r}")
    if isinstance(value, bool):
        raise FedVaultError(f"{where}: {key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FedVaultError(f"{where}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise FedVaultError(f"{where}: {key} must be finite, got {value!r}")
    if kind is int:
        if not number.is_integer() or number < 0:
            raise FedVaultError(f"{where}: {key} must be a whole number >= 0, got {value!r}")
        return int(number)
    return number


def site_settings(raw: Mapping[str, Any], where: str, simulated: bool) -> dict[str, Any]:
    """Validated, typed site settings from `raw`; one FedVaultError line naming the key.

    Refuses unknown keys, wrong types, impossible values and contradictions (a per-round
    limit above the whole budget, a budget on a site that does not require DP, a noise
    seed on a deployed site). Nothing is written on the way.
    """
    unknown = sorted(set(raw) - set(SITE_KEYS))
    if unknown:
        raise FedVaultError(f"{where}: unknown site setting {unknown[0]!r}")
    values = {key: _typed(key, value, where) for key, value in raw.items()}
    for key in ("max-epsilon", "evaluation-noise-multiplier"):
        if key in values and values[key] <= 0:
            raise FedVaultError(f"{where}: {key} must be > 0, got {values[key]:g}")
    for key in ("min-noise-multiplier", "max-epsilon-per-round", "tolerated-colluders"):
        if key in values and values[key] < 0:
            raise FedVaultError(f"{where}: {key} must be >= 0, got {values[key]:g}")
    if "delta" in values and not 0 < values["delta"] < 1:
        raise FedVaultError(f"{where}: delta must be in (0, 1), got {values['delta']:g}")
    budget = values.get("max-epsilon", DEFAULT_MAX_EPSILON)
    if values.get("max-epsilon-per-round", 0) > budget:
        raise FedVaultError(
            f"{where}: max-epsilon-per-round {values['max-epsilon-per-round']:g} is above the "
            f"site's whole budget max-epsilon {budget:g}"
        )
    if values.get("require-dp") is False:
        for key in ("max-epsilon", "min-noise-multiplier", "max-epsilon-per-round"):
            if key in values:
                raise FedVaultError(
                    f"{where}: {key} contradicts require-dp = false: a site that trains "
                    "without DP-SGD has no privacy budget"
                )
    if "insecure-seed" in values and not simulated:
        raise FedVaultError(
            f"{where}: insecure-seed is for simulated sites only: it makes the DP noise predictable"
        )
    return values


def make_site(
    name: str,
    state_dir: Path,
    settings: Mapping[str, Any],
    *,
    partition_id: int | None = None,
    num_partitions: int | None = None,
) -> Site:
    """A `Site` from validated settings (`site_settings`), with its defaults filled in."""
    simulated = partition_id is not None

    def get(key: str, default: Any) -> Any:
        return settings.get(key, default)

    floor = PrivacyFloor(
        require_dp=get("require-dp", True),
        min_noise_multiplier=get("min-noise-multiplier", 0.0),
        max_epsilon_per_round=get("max-epsilon-per-round", 0.0),
        require_secagg=get("require-secagg", not simulated),
        allow_evaluation=get("allow-evaluation", False),
        evaluation_noise_multiplier=get("evaluation-noise-multiplier", DEFAULT_EVALUATION_NOISE),
        allow_distributed_dp=get("allow-distributed-dp", True),
        tolerated_colluders=get("tolerated-colluders", 0),
        min_client_noise_multiplier=get("min-client-noise-multiplier", 0.0),
    )
    return Site(
        name=name,
        state_dir=state_dir,
        partition_id=partition_id,
        num_partitions=num_partitions,
        data_path=get("data-path", ""),
        policy_path=get("policy-path", ""),
        dataset_id=get("dataset-id", ""),
        max_epsilon=get("max-epsilon", DEFAULT_MAX_EPSILON),
        delta=get("delta", DEFAULT_DELTA),
        floor=floor,
        public_record_count=get("public-record-count", False),
        insecure_seed=get("insecure-seed", None),
        dropout_stage=get("dropout-stage", ""),
        roster_path=get("roster", str(state_dir / ROSTER_FILE)),
        identity_key_path=get("identity-key", str(state_dir / IDENTITY_KEY_FILE)),
        min_secagg_peers=get("min-secagg-peers", 1),
    )


def resolve_site(node_config: Mapping[str, Any], sites_root: str) -> Site:
    """The site for this node: deployed (node config `state-dir`) or simulated (partition id).

    A site with a roster is known by the name the roster gives its identity key; without
    one, by its state directory's name.
    """
    if "state-dir" in node_config:
        state_dir = Path(str(node_config["state-dir"]))
        raw = {**read_site_file(state_dir), **_from_node_config(node_config)}
        site = make_site(
            state_dir.name, state_dir, site_settings(raw, str(state_dir / SITE_FILE), False)
        )
        identity = site_identity(site)
        return replace(site, name=identity.name) if identity else site
    if "partition-id" not in node_config:
        raise FedVaultError("node config has neither 'state-dir' (deployment) nor 'partition-id'")
    if not sites_root:
        raise FedVaultError("simulation run config lacks 'sites-root'")
    pid = int(node_config["partition-id"])
    state_dir = Path(sites_root) / f"site-{pid}"
    settings = site_settings(read_site_file(state_dir), str(state_dir / SITE_FILE), True)
    site = make_site(
        f"site-{pid}",
        state_dir,
        settings,
        partition_id=pid,
        num_partitions=int(node_config["num-partitions"]),
    )
    identity = site_identity(site)
    return replace(site, name=identity.name) if identity else site


def site_identity(site: Site) -> Identity | None:
    """The site's identity (roster name, key, roster), None if it has no roster.

    A roster without the site's key, or a roster that lists the key under a name the site
    did not expect, is an error: the site refuses to run rather than run unnamed.
    """
    roster = Path(site.roster_path)
    if not roster.exists():
        return None
    return _load_identity(str(roster), site.identity_key_path, roster.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)  # one Ray actor serves many simulated sites
def _load_identity(roster: str, key: str, modified: int) -> Identity:
    return Identity.of(load_node_private_key(key), Roster.load(roster))


def read_site_file(state_dir: Path) -> dict[str, Any]:
    """The site's own settings file as written, if it has one (validate with site_settings)."""
    path = state_dir / SITE_FILE
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FedVaultError(f"cannot read site settings {path}: {exc}") from None


def _from_node_config(node_config: Mapping[str, Any]) -> dict[str, Any]:
    """Site keys set on the SuperNode's node config (empty values mean unset)."""
    return {k: node_config[k] for k in SITE_KEYS if k in node_config and node_config[k] != ""}
