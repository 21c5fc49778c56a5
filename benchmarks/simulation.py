"""Round time and accuracy of simulations, measured side by side in one invocation.

    python -m benchmarks.simulation                       # default scenario, as shipped
    python -m benchmarks.simulation --clients 10 50 100 --rounds 3 --compare secagg
    python -m benchmarks.simulation --scenario cross-device --clients 100 1000 \
        --vary client-dp-noise 0.5 1.0 2.0

With `--compare SETTING` every configuration runs twice, SETTING=true and SETTING=false,
one after the other, and the table gives the ratio of median round times (the first round,
which includes start-up, is left out of the median); `--vary SETTING V1 V2 ...` runs once per
value. Results go to stdout as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from simulations.runner import simulate
from simulations.scenario import load_scenario


def measure(scenario_name: str, clients: int, rounds: int, settings: dict) -> dict:
    scenario = load_scenario(scenario_name)
    scenario.num_sites = clients
    scenario.run.update({"num-rounds": rounds, "min-sites": min(2, clients), **settings})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        simulate(scenario, out)
        rows = json.loads((out / "metrics.json").read_text())[1:]
    if not rows:
        raise SystemExit(f"{clients} clients, {settings}: no round ran (budget too small?)")
    later = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
    return {
        "first-round-s": rows[0]["seconds"],
        "median-round-s": statistics.median(later),
        "test-accuracy": rows[-1]["test-accuracy"],
        "client-epsilon": rows[-1].get("client-epsilon"),
        "rounds": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--clients", type=int, nargs="+", default=[10])
    parser.add_argument("--rounds", type=int, default=None, help="default: the scenario's")
    parser.add_argument("--compare", metavar="SETTING", help="boolean setting to toggle")
    parser.add_argument(
        "--vary", nargs="+", metavar=("SETTING", "VALUE"), help="one run per value of SETTING"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    fixed = dict(item.split("=", 1) for item in args.set)
    rounds = args.rounds or int(load_scenario(args.scenario).run.get("num-rounds", 8))
    variants = [{}]
    if args.compare:
        variants = [{args.compare: True}, {args.compare: False}]
    elif args.vary:
        variants = [{args.vary[0]: value} for value in args.vary[1:]]
    header = (
        "| clients | variant | rounds run | first round s | median round s | test accuracy "
        "| client epsilon |"
    )
    print(header + (" ratio |" if args.compare else ""))
    print("|---" * (8 if args.compare else 7) + "|")
    for clients in args.clients:
        results = [measure(args.scenario, clients, rounds, {**fixed, **v}) for v in variants]
        for variant, result in zip(variants, results, strict=True):
            label = ", ".join(f"{k}={v}" for k, v in variant.items()) or "as configured"
            epsilon = result["client-epsilon"]
            row = (
                f"| {clients} | {label} | {result['rounds']} | {result['first-round-s']:.1f} | "
                f"{result['median-round-s']:.2f} | {result['test-accuracy']:.4f} | "
                f"{'-' if epsilon is None else f'{epsilon:.2f}'} |"
            )
            if args.compare:
                ratio = result["median-round-s"] / results[-1]["median-round-s"]
                row += f" {ratio:.2f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
