"""`fedvault run`: submit the FedVault app to a running server and follow it to the end.

Flower's `flwr run --stream` exits 0 even when the run failed, so this command submits,
streams the run's log, then asks the server for the run's final status and exits 1 unless
it is `finished:completed`. It talks to the loopback-only Control API, i.e. it runs on the
server machine (or through an SSH tunnel to it).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

from cli.processes import executable, flower_env
from privacy.errors import FedVaultError
from server.superlink import FlwrControl, control_target, read_toml
from simulations.scenario import flatten, load_scenario

APP_DIR = Path(__file__).resolve().parent.parent
RESUME_KEY = "resume-run-id"
COMPLETED = "finished:completed"
FINAL_STATUS_WAIT_S = 60.0


def app_config_keys(app_dir: Path) -> set[str]:
    """The run-config keys the app declares (`[tool.flwr.app.config]`, flattened)."""
    project = read_toml(app_dir / "pyproject.toml", "app project file")
    config = project.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    if not isinstance(config, dict):
        raise FedVaultError(f"{app_dir / 'pyproject.toml'} has no [tool.flwr.app.config]")
    return set(flatten(config))


def run_overrides(app_dir: Path, scenario: str | None, resume: str | None) -> dict:
    """Run-config overrides: the scenario's `[run]` table (flattened), plus resume.

    Scenarios are the simulation's (simulations/scenario.py): a shipped name or a file. Its
    `[simulation]` and `[sites]` sections do not apply to a deployment, where each site
    sets its own budget. Every key must be one the app declares.
    """
    overrides: dict = {}
    if scenario is not None:
        loaded = load_scenario(scenario)
        overrides = dict(loaded.run)
        if loaded.sites or loaded.site_overrides:
            print(
                "fedvault: note: the scenario's [sites] settings are not sent; in a deployment "
                "each site sets its own budget (fedvault client --max-epsilon/--delta)",
                file=sys.stderr,
            )
    if resume is not None:
        if not resume.isdigit():
            raise FedVaultError(f"--resume needs a run id (digits), got {resume!r}")
        overrides[RESUME_KEY] = resume
    known = app_config_keys(app_dir)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise FedVaultError(
            f"run-config key {unknown[0]!r} is not declared by the app in "
            f"{app_dir / 'pyproject.toml'} [tool.flwr.app.config]"
        )
    return overrides


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops following the run like Ctrl-C, so the `flwr log` child is stopped too."""
    raise KeyboardInterrupt


def _final_status(control: FlwrControl, run_id: str) -> tuple[str, str]:
    deadline = time.monotonic() + FINAL_STATUS_WAIT_S
    status, details = control.run_status(run_id)
    while not status.startswith("finished") and time.monotonic() < deadline:
        time.sleep(1.0)
        status, details = control.run_status(run_id)
    return status, details


def _run(args: argparse.Namespace) -> int:
    app_dir = Path(args.app).resolve()
    overrides = run_overrides(app_dir, args.scenario, args.resume)
    target = control_target(args.server, args.ca, args.state_dir)
    with (
        FlwrControl(target, executable("flwr"), flower_env()) as control,
        tempfile.TemporaryDirectory(prefix="fedvault-run-") as tmp,
    ):
        config_file = None
        if overrides:
            config_file = Path(tmp, "run-config.toml")
            config_file.write_text(tomli_w.dumps(overrides), encoding="utf-8")
        run_id = control.start_run(app_dir, config_file)
        print(f"fedvault: started run {run_id} on {target.address}", flush=True)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            control.stream_logs(run_id)
        except KeyboardInterrupt:
            print(
                f"fedvault: stopped following run {run_id}; it continues on the server "
                f"(stop it with: flwr stop {run_id})",
                file=sys.stderr,
            )
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
        status, details = _final_status(control, run_id)
    if status != COMPLETED:
        print(f"fedvault: error: run {run_id} {status}: {details}", file=sys.stderr)
        return 1
    print(f"fedvault: run {run_id} {status}", flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault run`."""
    parser = subparsers.add_parser(
        "run",
        help="submit a training run to the server and follow it",
        description="Submit the FedVault app to a running `fedvault server`, stream the "
        "run's log, and exit 0 only if the run finished successfully (1 if it failed, "
        "2 for bad input). Runs are submitted through the server's loopback-only Control "
        "API: run this on the server machine with --state-dir, or give --server and --ca.",
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        metavar="SCENARIO",
        help="a scenario name or .toml file (as for `fedvault simulate`); its [run] table "
        "overrides the app's run config (default: the app's own defaults)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the server's --state-dir (gives the control address and CA)",
    )
    parser.add_argument("--server", metavar="HOST:PORT", help="the server's Control API address")
    parser.add_argument("--ca", metavar="CA_CERT", help="the federation's ca.crt")
    parser.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue run RUN_ID from its last completed round (passed as resume-run-id)",
    )
    parser.add_argument(
        "--app",
        default=str(APP_DIR),
        metavar="DIR",
        help="the Flower app to submit (default: the FedVault app, %(default)s)",
    )
    parser.set_defaults(func=_run)
