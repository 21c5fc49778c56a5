"""`fedvault budget`: what a local DP-SGD training costs in epsilon, before running it.

Site operators and researchers use it to pick sigma for a target epsilon, or to see the
epsilon of a given sigma. Both accountants are always shown, with their versions and
sampling assumption, because the same training has different epsilons under each.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from privacy.accounting import (
    ACCOUNTANTS,
    PRV_MAX_EPSILON,
    PrivacyEvent,
    accountant_info,
    compute_epsilon,
    sample_rate_and_steps,
    solve_noise_multiplier,
    validate_dp_params,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `budget` subcommand."""
    parser = subparsers.add_parser(
        "budget",
        help="epsilon of a DP-SGD training, or the noise multiplier for a target epsilon",
        description="Compute the sample-level (epsilon, delta) of a local DP-SGD training "
        "with Poisson sampling (q = batch size / records, steps = epochs / q) under both "
        "Opacus accountants (prv, rdp), or solve the smallest noise multiplier (0.001 grid) "
        "that reaches a target epsilon. The prv epsilon is not computed (null with --json) "
        f"when the rdp epsilon is above {PRV_MAX_EPSILON:g}.",
    )
    parser.add_argument("--records", type=int, required=True, help="training records at the site")
    parser.add_argument("--batch-size", type=int, required=True, help="expected batch size")
    parser.add_argument("--epochs", type=int, required=True, help="local training epochs")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--noise-multiplier", type=float, metavar="SIGMA", help="noise std / clip norm"
    )
    target.add_argument(
        "--target-epsilon", type=float, metavar="EPS", help="solve sigma for this epsilon"
    )
    parser.add_argument("--delta", type=float, required=True, help="target delta, below 1/records")
    parser.add_argument(
        "--accountant",
        choices=ACCOUNTANTS,
        default="prv",
        help="accountant that --target-epsilon is solved with (default: prv)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def budget(
    *,
    records: int,
    batch_size: int,
    epochs: int,
    delta: float,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    accountant: str = "prv",
) -> dict[str, Any]:
    """The numbers `fedvault budget` prints, as a JSON-safe dict."""
    validate_dp_params(
        records=records,
        delta=delta,
        noise_multiplier=noise_multiplier,
        target_epsilon=target_epsilon,
    )
    sample_rate, steps = sample_rate_and_steps(records, batch_size, epochs)
    if noise_multiplier is None:
        noise_multiplier = solve_noise_multiplier(
            target_epsilon, delta, sample_rate, steps, accountant
        )
    event = PrivacyEvent(
        noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, clip_norm=1.0
    )
    result: dict[str, Any] = {
        "records": records,
        "batch_size": batch_size,
        "epochs": epochs,
        "sample_rate": sample_rate,
        "steps": steps,
        "delta": delta,
        "noise_multiplier": noise_multiplier,
        "target_epsilon": target_epsilon,
        "solved_with": accountant if target_epsilon is not None else None,
    }
    result["epsilon_rdp"] = compute_epsilon([event], delta, "rdp")
    result["epsilon_prv"] = (
        compute_epsilon([event], delta, "prv") if result["epsilon_rdp"] <= PRV_MAX_EPSILON else None
    )
    result["accountants"] = {name: accountant_info(name) for name in ACCOUNTANTS}
    return result


def _text(result: dict[str, Any]) -> str:
    lines = [
        f"records {result['records']}, batch size {result['batch_size']}, "
        f"epochs {result['epochs']}: sample rate q = {result['sample_rate']:.6g}, "
        f"steps = {result['steps']}",
    ]
    if result["target_epsilon"] is not None:
        lines.append(
            f"noise multiplier {result['noise_multiplier']:g} is the smallest (0.001 grid) "
            f"reaching epsilon <= {result['target_epsilon']:g} under {result['solved_with']}"
        )
    else:
        lines.append(f"noise multiplier {result['noise_multiplier']:g}")
    for name, info in result["accountants"].items():
        epsilon = result[f"epsilon_{name}"]
        value = (
            f"{epsilon:.4f}"
            if epsilon is not None
            else f"not computed (rdp epsilon above {PRV_MAX_EPSILON:g})"
        )
        lines.append(
            f"epsilon ({name}) = {value} at delta "
            f"{result['delta']:g}  [{info['implementation']} {info['version']} "
            f"{info['class'].rsplit('.', 1)[-1]}; {info['sampling']}; "
            f"{info['adjacency']} adjacency]"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry point of `fedvault budget`."""
    result = budget(
        records=args.records,
        batch_size=args.batch_size,
        epochs=args.epochs,
        delta=args.delta,
        noise_multiplier=args.noise_multiplier,
        target_epsilon=args.target_epsilon,
        accountant=args.accountant,
    )
    print(json.dumps(result, indent=2) if args.json else _text(result))
    return 0
