"""Run a scenario on Flower's simulation engine and leave nothing running afterwards.

Settings and data are checked here, before Ray starts, so a bad setting costs a second, not a
cluster start-up. Each simulated site gets its own state directory (its ledger and keys) with
its own `site.toml` under the run directory. Flower's `run_simulation` runs in this process;
Ray is shut down when it returns, whatever happened.

Ray is started (or, with an address, joined) here rather than by Flower, so that a cluster
that does not answer, or has no node with room for one site, is one line before any round
instead of a hang or a traceback from inside the engine. Joining leaves the cluster running.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from client.data import cached_partition
from client.site import SITE_FILE, read_site_file, site_settings
from privacy.atomic import atomic_write_text
from privacy.certs import parse_address
from privacy.errors import FedVaultError
from server.federation import run_federation
from server.progress import ProgressFn
from server.rundir import STATUS_FILE, RunDirectory
from simulations.audit import audit_model
from simulations.identities import give_identities
from simulations.scenario import Scenario
from tasks.settings import RunSettings

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Opt in now to Ray's coming handling of visible accelerators for sites that reserve no
    # GPU (FedVault trains on CPU), which is what its FutureWarning asks.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
RAY_PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RayCluster:
    """Where the simulated sites run, and what each one reserves there.

    Without an address a Ray instance is started on this machine with all its cores; with
    one (`HOST:PORT` of the head node, or `auto` for the cluster this machine belongs to) the
    run joins an existing cluster. Every simulated site is a Ray actor that reserves
    `site_cpus` CPUs and `site_gpus` GPUs (a fraction shares one device), so the cluster's
    resources, not the number of sites, bound how many sites train at once.
    """

    address: str | None = None
    site_cpus: float = 1.0
    site_gpus: float = 0.0

    def __post_init__(self) -> None:
        if not self.site_cpus > 0:
            raise FedVaultError(f"CPUs per site must be > 0, got {self.site_cpus:g}")
        if not self.site_gpus >= 0:
            raise FedVaultError(f"GPUs per site must be >= 0, got {self.site_gpus:g}")
        if self.address not in (None, "auto") and not _is_host_port(self.address):
            raise FedVaultError(
                f"Ray address {self.address!r}: give HOST:PORT of the head node "
                "(`ray start --head --port PORT`) or auto"
            )


def _is_host_port(address: str) -> bool:
    try:
        parse_address(address)
    except FedVaultError:
        return False
    return "/" not in address


def prepare_run(
    scenario: Scenario, out: Path, sites_root: Path | None = None, resume: bool = False
) -> RunSettings:
    """Validate settings and data, create the run and site directories; return the settings.

    Site state (ledgers, keys) lives under `sites_root`, by default inside the run directory;
    pointing several runs at one `sites_root` lets them spend one budget, as real sites do.
    A site directory that already has a site.toml keeps it: the site's own file wins.
    """
    if resume:
        scenario.run["resume-run-id"] = _run_id_of(out)
    elif out.exists() and any(out.iterdir()):
        raise FedVaultError(f"output directory {out} exists and is not empty; choose another --out")
    if scenario.num_sites < 1:
        raise FedVaultError(f"number of sites must be positive, got {scenario.num_sites}")
    sites_root = (sites_root or out / "sites").resolve()
    config = {**scenario.run, "out": str(out.resolve()), "sites-root": str(sites_root)}
    settings = RunSettings.from_config(config)
    if resume:  # refused before Ray starts, not by the ServerApp after it
        RunDirectory(out).check_resumable(settings.to_config())
    if settings.min_sites > scenario.num_sites:
        raise FedVaultError(
            f"min-sites {settings.min_sites} exceeds the {scenario.num_sites} simulated sites"
        )
    cached_partition(settings.task, settings.partition, scenario.num_sites)  # fails early
    written = {}
    for index in range(scenario.num_sites):
        site_dir = sites_root / f"site-{index}"
        if not (site_dir / SITE_FILE).exists():
            where = f"scenario {scenario.name} [sites] (site-{index})"
            written[site_dir] = site_settings(scenario.site_settings(index), where, simulated=True)
        else:
            site_settings(read_site_file(site_dir), str(site_dir / SITE_FILE), simulated=True)
    for site_dir, values in written.items():
        site_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(site_dir / SITE_FILE, tomli_w.dumps(values))
    if settings.secagg and settings.secagg_authenticated:
        give_identities(
            {f"site-{i}": sites_root / f"site-{i}" for i in range(scenario.num_sites)},
            out,
        )
    return settings


def simulate(
    scenario: Scenario,
    out: Path,
    progress: ProgressFn | None = None,
    sites_root: Path | None = None,
    resume: bool = False,
    cluster: RayCluster | None = None,
) -> dict:
    """Run the scenario (or continue the interrupted run in `out`); Ray is always shut down.

    `cluster` says where the sites run (default: a Ray started on this machine).
    """
    os.environ.update(OFFLINE_ENV)
    cluster = cluster or RayCluster()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    fresh = not out.exists()
    try:
        settings = prepare_run(scenario, out, sites_root, resume)
        site_resources = _start_ray(cluster)
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise
    result: dict = {}

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        result.update(
            run_federation(
                grid,
                settings,
                str(context.run_id),
                progress,
                audit=lambda model, trained: audit_model(
                    settings, scenario.num_sites, model, [_partition(name) for name in trained]
                ),
            )
        )

    from flwr.simulation import run_simulation

    from client.app import app as client_app

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=scenario.num_sites,
                backend_config={"client_resources": site_resources},
            )
    finally:
        _shutdown_ray()
    if not result:
        raise FedVaultError(f"the simulation did not complete; see {out / 'status.json'}")
    return result


def _partition(site: str) -> int:
    """The partition id of a simulated site from its name (`site-<id>`)."""
    return int(site.rpartition("-")[2])


def _run_id_of(out: Path) -> str:
    """The run id recorded in an interrupted run directory."""
    try:
        status = json.loads((out / STATUS_FILE).read_text())
    except (OSError, ValueError):
        raise FedVaultError(f"{out} is not a run directory (no readable {STATUS_FILE})") from None
    if "run_id" not in status:
        raise FedVaultError(f"{out}/{STATUS_FILE} records no run id")
    return str(status["run_id"])


def _start_ray(cluster: RayCluster) -> dict[str, float]:
    """Start or join Ray; the resources one simulated site reserves (Flower's client_resources).

    On a cluster the offline settings travel as the job's environment, so that sites on other
    nodes run with them too. A local instance's workers inherit them from this process (set by
    `simulate`), and without a job environment Ray does not first set one up for the sites'
    actors (about 2 s per run). Flower sees Ray initialised and uses this connection. On
    failure Ray is left down.
    """
    import ray
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    options = {"include_dashboard": False, "logging_level": logging.WARNING}
    if cluster.address is None:  # "local": a new instance, whatever RAY_ADDRESS or `ray start` say
        ray.init(address="local", num_cpus=os.cpu_count() or 1, **options)
        where = "this machine"
    else:
        if cluster.address != "auto":
            _probe(cluster.address)
        try:
            ray.init(
                address=cluster.address,
                runtime_env={"env_vars": dict(OFFLINE_ENV)},
                **options,
            )
        except ConnectionError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise FedVaultError(
                f"cannot join the Ray cluster at {cluster.address}: {reason}"
            ) from None
        where = f"the Ray cluster at {cluster.address}"
    resources = {"num_cpus": cluster.site_cpus, "num_gpus": cluster.site_gpus}
    try:
        pool_size_from_resources(resources)
    except ValueError:
        ray.shutdown()
        raise FedVaultError(
            f"no node of {where} has {cluster.site_cpus:g} CPU(s) and {cluster.site_gpus:g} "
            "GPU(s) for one site; lower the resources per site"
        ) from None
    return resources


def _probe(address: str) -> None:
    """Refuse a head node that does not answer: `ray.init` would retry for minutes."""
    host, port = parse_address(address)
    try:
        socket.create_connection((host, port), timeout=RAY_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise FedVaultError(
            f"no Ray head node answers at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head --port PORT`"
        ) from None


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
