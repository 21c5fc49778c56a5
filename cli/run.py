"""`fedvault run`: submit the FedVault app to a running server and follow it to the end.

Flower's `flwr run --stream` exits 0 even when the run failed, so this command submits,
streams the run's log, then asks the server for the run's final status and exits 1 unless
it is `finished:completed`. It talks to the loopback-only Control API, i.e. it runs on the
server machine (or through an SSH tunnel to it).

Before anything is submitted, a run of the FedVault app is checked here as its ServerApp
will see it (the app's defaults under the scenario's overrides, through the same
`RunSettings`), and its run directory is checked against what it already holds: a mistake
the server would only find after the run started, with a traceback in its log, or one that
would mix two runs in one ledger, is one line and exit status 2 instead. The run directory
is read on this machine, which is the server machine the run directory lives on.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

from cli.processes import executable, flower_env
from client.approval import app_build_hash, stage_app
from privacy.errors import FedVaultError
from privacy.identity import ROSTER_FILE
from server.superlink import FlwrControl, control_target, read_toml
from simulations.scenario import flatten, load_scenario

APP_DIR = Path(__file__).resolve().parent.parent
RESUME_KEY = "resume-run-id"
COMPLETED = "finished:completed"
FINAL_STATUS_WAIT_S = 60.0
# The ServerApp whose run config tasks/settings.py describes (pyproject.toml names it).
FEDVAULT_SERVERAPP = "server.app:app"


def _flwr_app(app_dir: Path) -> dict:
    """The app's `[tool.flwr.app]` table."""
    project = read_toml(app_dir / "pyproject.toml", "app project file")
    return project.get("tool", {}).get("flwr", {}).get("app", {})


def app_config(app_dir: Path) -> dict:
    """The run-config defaults the app declares (`[tool.flwr.app.config]`, flattened)."""
    config = _flwr_app(app_dir).get("config")
    if not isinstance(config, dict):
        raise FedVaultError(f"{app_dir / 'pyproject.toml'} has no [tool.flwr.app.config]")
    return flatten(config)


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
    unknown = sorted(set(overrides) - set(app_config(app_dir)))
    if unknown:
        raise FedVaultError(
            f"run-config key {unknown[0]!r} is not declared by the app in "
            f"{app_dir / 'pyproject.toml'} [tool.flwr.app.config]"
        )
    return overrides


def check_run(app_dir: Path, overrides: dict, resume: str | None) -> None:
    """Refuse a FedVault run that its ServerApp would fail, or that would damage `out`.

    Other apps (`--app`) have run configs of their own: only their keys are checked.
    """
    if _flwr_app(app_dir).get("components", {}).get("serverapp") != FEDVAULT_SERVERAPP:
        return
    from tasks.settings import RunSettings

    settings = RunSettings.from_config({**app_config(app_dir), **overrides})
    out = Path(settings.out)
    if not out.is_absolute():
        raise FedVaultError(
            f"run setting 'out' must be an absolute path on the server machine, got "
            f"{settings.out!r} (the ServerApp would write it under the SuperLink's working "
            "directory)"
        )
    check_run_directory(out, resume)


def check_run_directory(out: Path, resume: str | None) -> None:
    """A new run needs a fresh `out`; `--resume RUN_ID` needs `out` to hold run RUN_ID unfinished.

    A second run in one directory would append to the first run's ledger and replace its
    signed report, and the mixed result would still verify.
    """
    from server.rundir import STATUS_FILE

    status = _run_status(out / STATUS_FILE)
    if resume is not None:
        if status is None:
            raise FedVaultError(f"no run to resume in {out} (no readable {STATUS_FILE})")
        held = str(status.get("run_id"))
        if held != resume:
            raise FedVaultError(f"{out} holds run {held}, not {resume}; cannot resume it")
        if status.get("status") == "completed":
            raise FedVaultError(f"run {resume} in {out} already completed; nothing to resume")
        return
    if status is not None:
        held = status.get("run_id")
        if status.get("status") == "completed":
            raise FedVaultError(
                f"{out} already holds completed run {held}; choose another out for a new run"
            )
        raise FedVaultError(
            f"{out} holds unfinished run {held} ({status.get('status')}); continue it with "
            f"--resume {held}, or choose another out"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedVaultError(f"run directory {out} exists and is not empty; choose another out")


def _run_status(path: Path) -> dict | None:
    """The run directory's status record; None if there is none."""
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FedVaultError(f"cannot read {path}: {exc}") from None
    if not isinstance(status, dict):
        raise FedVaultError(f"{path} is not a run status record")
    return status


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


def deployment_overrides(app_dir: Path, state_dir: str | None) -> dict:
    """What every deployed FedVault run is told by `fedvault run` itself: that it has no
    simulated sites, and where the federation roster is (its report checks the sites'
    signatures against it)."""
    if _flwr_app(app_dir).get("components", {}).get("serverapp") != FEDVAULT_SERVERAPP:
        return {}
    overrides: dict = {"sites-root": ""}
    if state_dir is not None and (Path(state_dir) / ROSTER_FILE).is_file():
        overrides["roster"] = str((Path(state_dir) / ROSTER_FILE).resolve())
    return overrides


def _run(args: argparse.Namespace) -> int:
    app_dir = Path(args.app).resolve()
    overrides = {
        **deployment_overrides(app_dir, args.state_dir),
        **run_overrides(app_dir, args.scenario, args.resume),
    }
    target = control_target(args.server, args.ca, args.state_dir)
    build = app_build_hash(app_dir)
    with (
        FlwrControl(target, executable("flwr"), flower_env()) as control,
        tempfile.TemporaryDirectory(prefix="fedvault-run-") as tmp,
    ):
        check_run(app_dir, overrides, args.resume)
        config_file = None
        if overrides:
            config_file = Path(tmp, "run-config.toml")
            config_file.write_text(tomli_w.dumps(overrides), encoding="utf-8")
        print(
            f"fedvault: submitting app build sha256:{build} (sites serve it only once they "
            f"approved it: fedvault approve {build} --state-dir SITE_STATE)",
            flush=True,
        )
        run_id = control.start_run(stage_app(app_dir, Path(tmp, "app")), config_file)
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
        "API: run this on the server machine with --state-dir, or give --server and --ca. "
        "Nothing is submitted unless the server's certificate checks out against the CA, "
        "the run settings pass the checks the ServerApp makes, `out` is an absolute path, "
        "and `out` holds no other run (with --resume: holds run RUN_ID, unfinished).",
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
