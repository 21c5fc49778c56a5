"""Scenario files: a run's settings, the number of simulated sites and each site's budget.

[simulation]
num-sites = 10

[run]                      # FedVault run settings (see tasks/settings.py)
num-rounds = 8
task.name = "mnist1d"

[sites]                    # what every simulated site decides for itself
max-epsilon = 8.0
delta = 1e-5

[sites.site-3]             # one site with its own, smaller budget
max-epsilon = 1.0
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from privacy.errors import FedVaultError

DEFAULT_SCENARIO = "default"


@dataclass
class Scenario:
    """A parsed scenario: flat run config, site count, per-site settings."""

    name: str
    run: dict = field(default_factory=dict)
    num_sites: int = 10
    sites: dict = field(default_factory=dict)
    site_overrides: dict[str, dict] = field(default_factory=dict)

    def site_settings(self, index: int) -> dict:
        """The settings simulated site `index` writes into its own site.toml."""
        return {**self.sites, **self.site_overrides.get(f"site-{index}", {})}


def shipped_scenarios() -> list[str]:
    """Names of the scenarios shipped in simulations/scenarios/."""
    folder = resources.files("simulations") / "scenarios"
    return sorted(
        p.name[: -len(".toml")]
        for p in folder.iterdir()
        if p.name.endswith(".toml")
        and not p.name.endswith("-schema.toml")
        and not p.name.endswith("-policy.toml")
    )


def load_scenario(name_or_path: str | None) -> Scenario:
    """A shipped scenario by name, or a scenario file by path."""
    name = name_or_path or DEFAULT_SCENARIO
    path = Path(name)
    if path.suffix != ".toml":
        shipped = resources.files("simulations") / "scenarios" / f"{name}.toml"
        if not shipped.is_file():
            raise FedVaultError(
                f"unknown scenario {name!r}: choose one of {', '.join(shipped_scenarios())} "
                "or give a .toml file"
            )
        path = Path(str(shipped))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedVaultError(f"scenario file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FedVaultError(f"cannot read scenario {path}: {exc}") from None
    unknown = set(raw) - {"simulation", "run", "sites"}
    if unknown:
        raise FedVaultError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
    run = flatten(raw.get("run", {}))
    for key in ("task.csv", "task.schema"):
        if key in run and not Path(run[key]).is_absolute():
            run[key] = str((path.parent / run[key]).resolve())
    simulation = raw.get("simulation", {})
    unknown = set(simulation) - {"num-sites"}
    if unknown:
        raise FedVaultError(f"{path}: unknown [simulation] key(s) {', '.join(sorted(unknown))}")
    sites = dict(raw.get("sites", {}))
    overrides = {k: sites.pop(k) for k in list(sites) if isinstance(sites[k], dict)}
    for settings in (sites, *overrides.values()):
        if "policy-path" in settings and not Path(settings["policy-path"]).is_absolute():
            settings["policy-path"] = str((path.parent / settings["policy-path"]).resolve())
    return Scenario(path.stem, run, int(simulation.get("num-sites", 10)), sites, overrides)


def flatten(table: dict, prefix: str = "") -> dict:
    """Nested TOML tables to Flower-style dotted keys (`task.name`)."""
    flat: dict = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
