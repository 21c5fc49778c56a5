"""`fedvault report`: (re)write a run's signed privacy report, or verify one.

A compliance reviewer regenerates the report from the run's ledgers alone, or checks that
the ledgers, report.json and its signature still agree (`--verify`), without running any
training. Heavy libraries (opacus, matplotlib) load only when the command runs, so
`fedvault --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FORMATS = {"html": ("html",), "json": (), "md": ("md",), "all": ("html", "md")}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="write or verify a run's signed privacy-budget report",
        description="Rebuild a run's privacy report from its ledgers: report.json (schema in "
        "docs/report-schema.md) signed with Ed25519 in report.sig, plus report.html with "
        "plots and/or report.md. Every epsilon is recomputed from the recorded privacy "
        "events. With --verify, check instead that every ledger's hash chain holds, that the "
        "report's recorded ledger heads match, that the signature is valid, that report.html, "
        "report.md and the plots are the ones it signed, that the site ledgers hold the heads "
        "their sites signed, and that report.json equals a fresh rebuild; exit 2 naming the "
        "first problems otherwise.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    parser.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="html",
        help="what to write besides report.json and report.sig: html (report.html and "
        "plots/), json (nothing else), md (report.md) or all (default: html)",
    )
    parser.add_argument(
        "--verify", action="store_true", help="verify the existing report instead of writing"
    )
    parser.add_argument(
        "--public-key",
        type=Path,
        metavar="PATH",
        help="with --verify: PEM public key the report must be signed with (signing.key.pub)",
    )
    parser.add_argument(
        "--roster",
        type=Path,
        metavar="ROSTER",
        help="with --verify: your own copy of the federation roster, to check the ledger "
        "heads each site signed (default: the run's roster.toml)",
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        metavar="PATH",
        help="Ed25519 key to sign with, created if absent "
        "(default: $FEDVAULT_HOME/server/signing.key, FEDVAULT_HOME defaulting to ~/.fedvault)",
    )
    parser.set_defaults(func=run)


def _previous_audit(run_dir: Path, key_path: Path) -> dict | None:
    """The audit of the existing report, kept if that report verifies under the same key."""
    from privacy.report import verify_run
    from privacy.report.signing import public_key_path

    if not (run_dir / "report.json").is_file() or not public_key_path(key_path).is_file():
        return None
    if verify_run(run_dir, public_key_path(key_path)):
        return None
    return json.loads((run_dir / "report.json").read_text(encoding="utf-8")).get("audit")


def run(args: argparse.Namespace) -> int:
    from privacy.errors import FedVaultError
    from privacy.report import verify_run, write_report

    if args.verify:
        problems = verify_run(args.run_dir, args.public_key, args.roster)
        if problems:
            raise FedVaultError(f"{args.run_dir}: verification failed: " + "; ".join(problems))
        signer = "the given public key" if args.public_key else "the key report.json names"
        print(
            f"{args.run_dir}: report verified: ledgers intact, report.json matches them, "
            f"signature valid for {signer}"
        )
        return 0
    if args.public_key is not None or args.roster is not None:
        raise FedVaultError("--public-key and --roster are only used with --verify")
    from privacy.report.signing import default_signing_key

    key_path = args.signing_key or default_signing_key()
    audit = _previous_audit(args.run_dir, key_path)
    report = write_report(
        args.run_dir, signing_key_path=key_path, audit=audit, formats=FORMATS[args.format]
    )
    print(report["summary"]["headline"])
    written = ["report.json", "report.sig"] + {
        "html": ["report.html"],
        "json": [],
        "md": ["report.md"],
        "all": ["report.html", "report.md"],
    }[args.format]
    print(f"wrote {', '.join(written)} in {args.run_dir} (signed with {key_path})")
    return 0
