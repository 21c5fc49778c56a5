"""Run a scenario on Flower's simulation engine and leave nothing running afterwards.

Settings and data are checked here, before Ray starts, so a bad setting costs a second, not a
cluster start-up. Each simulated site gets its own state directory (its ledger and keys) with
its own `site.toml` under the run directory. Flower's `run_simulation` runs in this process;
Ray is shut down when it returns, whatever happened.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import tomli_w
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from client.data import cached_dataset, partition_rows
from client.site import SITE_FILE, read_site_file, site_settings
from privacy.atomic import atomic_write_text
from privacy.errors import FedVaultError
from server.federation import ProgressFn, run_federation
from server.rundir import STATUS_FILE
from simulations.audit import audit_model
from simulations.scenario import Scenario
from tasks.settings import RunSettings

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


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
    if settings.min_sites > scenario.num_sites:
        raise FedVaultError(
            f"min-sites {settings.min_sites} exceeds the {scenario.num_sites} simulated sites"
        )
    dataset = cached_dataset(settings.task)
    partition_rows(dataset, settings.partition_spec, scenario.num_sites, settings.task.seed)
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
    return settings


def simulate(
    scenario: Scenario,
    out: Path,
    progress: ProgressFn | None = None,
    sites_root: Path | None = None,
    resume: bool = False,
) -> dict:
    """Run the scenario (or continue the interrupted run in `out`); Ray is always shut down."""
    os.environ.update(OFFLINE_ENV)
    fresh = not out.exists()
    try:
        settings = prepare_run(scenario, out, sites_root, resume)
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
                audit=lambda model: audit_model(settings, scenario.num_sites, model),
            )
        )

    from flwr.simulation import run_simulation

    from client.app import app as client_app

    logging.getLogger("flwr").setLevel(logging.ERROR)
    cpus = os.cpu_count() or 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=scenario.num_sites,
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": {"num_cpus": cpus, "include_dashboard": False},
                },
            )
    finally:
        _shutdown_ray()
    if not result:
        raise FedVaultError(f"the simulation did not complete; see {out / 'status.json'}")
    return result


def print_progress(num_rounds: int, echo: Callable[[str], None] = print) -> ProgressFn:
    """A progress function printing one line per round."""
    started = time.monotonic()

    def report(metrics: dict) -> None:
        parts = [
            f"round {metrics['round']:>3}/{num_rounds}",
            f"test-acc {metrics['test-accuracy']:.4f}",
            f"loss {metrics['test-loss']:.4f}",
            f"sites {metrics['sites-trained']}",
        ]
        if metrics.get("sites-refused"):
            parts.append(f"refused {metrics['sites-refused']}")
        if "train-epsilon" in metrics:
            parts.append(f"site-eps {metrics['train-epsilon']:.3f}")
        if metrics.get("client-epsilon") is not None:
            parts.append(f"client-eps {metrics['client-epsilon']:.3f}")
        if metrics.get("secagg-aborted"):
            parts.append("secagg ABORTED")
        parts.append(f"{metrics['seconds']:.1f}s (total {time.monotonic() - started:.0f}s)")
        echo("  ".join(parts))

    return report


def _run_id_of(out: Path) -> str:
    """The run id recorded in an interrupted run directory."""
    try:
        status = json.loads((out / STATUS_FILE).read_text())
    except (OSError, ValueError):
        raise FedVaultError(f"{out} is not a run directory (no readable {STATUS_FILE})") from None
    if "run_id" not in status:
        raise FedVaultError(f"{out}/{STATUS_FILE} records no run id")
    return str(status["run_id"])


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
