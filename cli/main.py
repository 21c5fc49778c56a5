"""Entry point of the `fedvault` command.

Each subcommand lives in its own module with a `register(subparsers)` function that adds its
parser and sets `func`. Problems the user can fix arrive as `FedVaultError` and become one
line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from privacy.errors import FedVaultError

SUBCOMMAND_MODULES = (
    "cli.simulate",
    "cli.data",
    "cli.anonymize",
    "cli.budget",
    "cli.certs",
    "cli.keys",
    "cli.server",
    "cli.client",
    "cli.approve",
    "cli.roster",
    "cli.kubernetes",
    "cli.run",
    "cli.report",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="fedvault",
        description="Privacy-preserving federated learning on Flower: DP-SGD at every site, "
        "secure aggregation, anonymization and auditable privacy-budget reports.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FedVaultError as exc:
        print(f"fedvault: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedvault: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
