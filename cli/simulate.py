"""`fedvault simulate`: run a scenario on Flower's simulation engine and write a run directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from simulations.scenario import load_scenario, shipped_scenarios


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a multi-site simulation (Flower simulation engine, Ray backend)",
        description="Train one model across simulated sites and write a run directory "
        "(config, per-round metrics, final model, status). Without arguments it runs the "
        "default scenario: 10 sites on MNIST-1D.",
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        help=f"scenario name ({', '.join(shipped_scenarios())}) or a .toml file (default: default)",
    )
    parser.add_argument("--clients", type=int, metavar="N", help="number of simulated sites")
    parser.add_argument("--rounds", type=int, metavar="R", help="number of rounds")
    parser.add_argument("--task", metavar="NAME", help="mnist1d, digits or tabular")
    parser.add_argument("--csv", metavar="FILE", help="CSV file for --task tabular")
    parser.add_argument("--schema", metavar="FILE", help="schema TOML for --task tabular")
    parser.add_argument("--partition", metavar="SPEC", help="iid, dirichlet:ALPHA or column:NAME")
    parser.add_argument("--seed", type=int, metavar="S", help="seed for data, split and model")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any run setting, e.g. --set learning-rate=0.1 (repeatable)",
    )
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/<time>)")
    parser.add_argument(
        "--sites",
        metavar="DIR",
        help="persistent state directory of the simulated sites (ledgers, keys); runs that "
        "share it spend one privacy budget (default: <run directory>/sites)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last completed round",
    )
    cluster = parser.add_argument_group(
        "where the simulated sites run (default: a Ray started on this machine, one CPU per site)"
    )
    cluster.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="join an existing Ray cluster instead: the head node's address (its `ray start "
        "--head --port`), or auto for the cluster this machine belongs to. Every node needs "
        "this FedVault installation, and --out and --sites must be on storage all nodes share",
    )
    cluster.add_argument(
        "--site-cpus",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs each simulated site reserves (default: %(default)g): a node with C cores "
        "trains at most C / N sites at once",
    )
    cluster.add_argument(
        "--site-gpus",
        type=float,
        default=0.0,
        metavar="N",
        help="GPUs each simulated site reserves (default: %(default)g; 0.5 lets two sites share "
        "one); FedVault's training itself runs on CPU",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from privacy.errors import FedVaultError
    from server.progress import print_progress
    from simulations.runner import RayCluster, simulate

    scenario = load_scenario(args.scenario)
    overrides = {
        "num-rounds": args.rounds,
        "task.name": args.task,
        "task.csv": str(Path(args.csv).resolve()) if args.csv else None,
        "task.schema": str(Path(args.schema).resolve()) if args.schema else None,
        "partition": args.partition,
        "task.seed": args.seed,
    }
    scenario.run.update({k: v for k, v in overrides.items() if v is not None})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FedVaultError(f"--set expects KEY=VALUE, got {item!r}")
        scenario.run[key.strip()] = value.strip()
    if args.clients is not None:
        scenario.num_sites = args.clients
    if args.resume and not args.out:
        raise FedVaultError("--resume needs --out, the run directory to continue")
    cluster = RayCluster(args.ray_address, args.site_cpus, args.site_gpus)
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{scenario.name}")
    rounds = int(scenario.run.get("num-rounds", 8))
    where = f" on the Ray cluster at {cluster.address}" if cluster.address else ""
    print(
        f"fedvault: simulating {scenario.num_sites} sites{where}, scenario {scenario.name!r}, "
        f"-> {out}"
    )
    sites = Path(args.sites) if args.sites else None
    final = simulate(
        scenario, out, print_progress(rounds), sites, resume=args.resume, cluster=cluster
    )
    print(f"fedvault: done, test accuracy {final['test-accuracy']:.4f}; run directory {out}")
    print(f"fedvault: privacy-budget report {out / 'report.html'}")
    print(f"fedvault: check it with: fedvault report --verify {out}")
    return 0
