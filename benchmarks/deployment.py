"""A deployed secure round against the same round simulated, side by side, stage by stage.

The deployment is docs/deployment.md's loopback walkthrough, every process the one an
operator starts: `fedvault server` (SuperLink with TLS and node authentication behind the
Fleet-only proxy when nginx is installed), three `fedvault client` sites with their own
clinic tables, keys, roster and approved build, and `fedvault run` with DP-SGD under
authenticated secure aggregation. The simulation is `fedvault simulate` of the same task
with three sites. Both write per-round seconds (metrics.json) and per-stage seconds (the run
ledger's `secagg_round` rows); the first round, which includes start-up, is left out.

    python -m benchmarks.deployment                            # local DP, 3 rounds each
    python -m benchmarks.deployment --dp-mode distributed --rounds 12

`--dp-mode local` (the default here) runs every site's own DP-SGD epoch under a full
SecAgg+ round (five exchanges, three after the first: the next round's setup and
share-keys ride on this round's consistency and unmask); `distributed` runs distributed
DP-SGD, one DP step per round in one exchange after the sites agreed keys
(docs/distributed-dp.md).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

from cli.processes import Supervisor

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "simulations" / "scenarios" / "clinic-schema.toml"
FEDVAULT = [sys.executable, "-m", "cli.main"]
STAGES = ("setup", "share-keys", "masked-input", "consistency", "unmask", "step")
SITES = ("site-a", "site-b", "site-c")
RUNS = {
    "local": {
        "local-epochs": 1,
        "batch-size": 32,
        "learning-rate": 0.05,
        "dp": True,
        "noise-multiplier": 1.0,
        "secagg": True,
        "fraction-evaluate": 0.0,
    },
    "distributed": {
        "batch-size": 64,
        "learning-rate": 0.5,
        "dp": True,
        "dp-mode": "distributed",
        "accountant": "rdp",
        "noise-multiplier": 1.0,
        "secagg": True,
        "fraction-evaluate": 0.0,
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fedvault(*args: str, env: dict) -> str:
    """Run one `fedvault` command to completion; its output, or SystemExit naming it."""
    done = subprocess.run([*FEDVAULT, *args], env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"fedvault {args[0]} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def timings(out: Path) -> dict:
    """Median seconds per round and per stage, after the first round."""
    rounds = json.loads((out / "metrics.json").read_text())[2:]
    with sqlite3.connect(out / "run-ledger.sqlite") as db:
        rows = [
            json.loads(p)
            for (p,) in db.execute("SELECT payload FROM rows WHERE kind = 'secagg_round'")
        ][1:]
    stages = {
        stage: statistics.median(r["stage-seconds"][stage] for r in rows)
        for stage in STAGES
        if rows and all(stage in r.get("stage-seconds", {}) for r in rows)
    }
    return {"round": statistics.median(r["seconds"] for r in rounds), **stages}


def deployed(root: Path, run_settings: dict, rounds: int, env: dict) -> dict:
    port, control = free_port(), free_port()
    fedvault("certs", "init", "--out", str(root / "certs"), "--server-name", "localhost", env=env)
    fedvault("data", "synth", "clinic", "--rows", "500", "--seed", "99",
             "-o", str(root / "holdout.csv"), env=env)  # fmt: skip
    with (root / "processes.log").open("w") as log, Supervisor(out=log) as supervisor:
        server = supervisor.start(
            "server",
            [*FEDVAULT, "server", "--certs", str(root / "certs"), "--state-dir",
             str(root / "server"), "--port", str(port), "--control-port", str(control)],
            env,
        )  # fmt: skip
        supervisor.wait_until(
            server, lambda: (root / "server" / "server.toml").exists(), 120, "readiness"
        )
        for seed, site in enumerate(SITES, start=1):
            fedvault("keys", "new", "--out", str(root / site / "node.key"), env=env)
            fedvault("register", str(root / site / "node.key.pub"), "--name", site,
                     "--state-dir", str(root / "server"), env=env)  # fmt: skip
            fedvault("data", "synth", "clinic", "--rows", "2000", "--seed", str(seed),
                     "-o", str(root / site / "clinic.csv"), env=env)  # fmt: skip
        fedvault("roster", "--state-dir", str(root / "server"), "-o", str(root / "roster.toml"),
                 env=env)  # fmt: skip
        for site in SITES:
            state = root / site / "state"
            fedvault("approve", "--state-dir", str(state), "--app", str(REPO), env=env)
            client = supervisor.start(
                site,
                [*FEDVAULT, "client", "--state-dir", str(state), "--server",
                 f"127.0.0.1:{port}", "--ca", str(root / "certs" / "ca.crt"),
                 "--key", str(root / site / "node.key"), "--roster", str(root / "roster.toml"),
                 "--data", str(root / site / "clinic.csv"), "--max-epsilon", "50",
                 "--port", str(free_port())],
                env,
            )  # fmt: skip
            supervisor.wait_until(
                client,
                lambda c=client: any("site connected" in line for line in c.output()),
                300,
                "connection",
            )
        out = root / "run"
        scenario = root / "scenario.toml"
        task = {"name": "tabular", "csv": str(root / "holdout.csv"), "schema": str(SCHEMA)}
        run = {**run_settings, "num-rounds": rounds, "min-sites": 3, "out": str(out), "task": task}
        scenario.write_text(tomli_w.dumps({"run": run}))
        started = time.monotonic()
        fedvault("run", str(scenario), "--state-dir", str(root / "server"), env=env)
        print(f"deployment: {time.monotonic() - started:.0f} s for {rounds} rounds", flush=True)
    return timings(out)


def simulated(root: Path, run_settings: dict, rounds: int, env: dict) -> dict:
    fedvault("data", "synth", "clinic", "--rows", "6500", "--seed", "1",
             "-o", str(root / "all.csv"), env=env)  # fmt: skip
    out = root / "simulated"
    task = {"name": "tabular", "csv": str(root / "all.csv"), "schema": str(SCHEMA)}
    scenario = {
        "simulation": {"num-sites": len(SITES)},
        "run": {
            **run_settings,
            "num-rounds": rounds,
            "min-sites": 3,
            "partition": "iid",
            "task": task,
        },
        "sites": {"max-epsilon": 50.0},
    }
    (root / "scenario.toml").write_text(tomli_w.dumps(scenario))
    fedvault("simulate", str(root / "scenario.toml"), "--out", str(out), env=env)
    return timings(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each run (default 3)")
    parser.add_argument(
        "--dp-mode",
        choices=sorted(RUNS),
        default="local",
        help="local DP-SGD under SecAgg+ rounds, or distributed DP-SGD (default local)",
    )
    args = parser.parse_args(argv)
    run_settings = RUNS[args.dp_mode]
    with tempfile.TemporaryDirectory(prefix="fedvault-bench-") as tmp:
        root = Path(tmp)
        passphrase = root / "passphrase"  # keys encrypted at rest, as in the walkthrough
        passphrase.write_text(secrets.token_urlsafe(32) + "\n")
        passphrase.chmod(0o600)
        env = {
            **os.environ,
            "FEDVAULT_HOME": str(root / "home"),
            "FEDVAULT_PASSPHRASE_FILE": str(passphrase),
        }
        results = {
            "deployment": deployed(root / "deployment", run_settings, args.rounds, env),
            "simulation": simulated(root / "simulation", run_settings, args.rounds, env),
        }
    stages = [stage for stage in STAGES if stage in results["simulation"]]
    header = ["mode", "round s", *(f"{s} s" for s in stages)]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for mode, result in results.items():
        cells = [f"{result.get(key, float('nan')):.2f}" for key in ("round", *stages)]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    ratio = results["deployment"]["round"] / results["simulation"]["round"]
    print(f"\ndeployed round / simulated round: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
