"""`fedvault anonymize`: apply a site's anonymization policy to a CSV, or draft a policy.

Operators use it to check a policy on their own data before a run, and to export tables that
may leave the site. Outputs appear only when every target is met: the CSV and the report are
written to temporary names and renamed together at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from privacy.anonymization import (
    anonymize_table,
    load_or_create_key,
    load_policy,
    read_table_csv,
    suggest_policy,
)
from privacy.atomic import atomic_path
from privacy.errors import FedVaultError


def _detect(args: argparse.Namespace) -> int:
    extra = [
        flag
        for flag, value in (
            ("IN.csv", args.input),
            ("--policy", args.policy),
            ("-o", args.output),
            ("--report", args.report),
        )
        if value
    ]
    if extra:
        raise FedVaultError(f"--detect takes only the CSV to scan, not {', '.join(extra)}")
    table = read_table_csv(args.detect)
    sys.stdout.write(suggest_policy(table, source=Path(args.detect).name))
    return 0


def _anonymize(args: argparse.Namespace) -> int:
    if not (args.input and args.policy and args.output):
        raise FedVaultError("give IN.csv, --policy POLICY.toml and -o OUT.csv (or --detect FILE)")
    paths = {"input": Path(args.input).resolve(), "output": Path(args.output).resolve()}
    if args.report:
        paths["report"] = Path(args.report).resolve()
    if len(set(paths.values())) != len(paths):
        raise FedVaultError("input, output and report must be different files")
    policy = load_policy(args.policy)
    table = read_table_csv(args.input)
    key = None
    if any(rule.action == "pseudonymize" for rule in policy.columns.values()):
        if not args.state_dir:
            raise FedVaultError(
                "the policy pseudonymizes columns: give --state-dir (where the site key lives)"
            )
        key = load_or_create_key(args.state_dir)
    result = anonymize_table(table, policy, key)
    report_text = json.dumps(result.report, indent=2, allow_nan=False) + "\n"
    try:
        with atomic_path(args.output) as csv_tmp:
            result.table.to_csv(csv_tmp, index=False)
            if args.report:
                with atomic_path(args.report) as report_tmp:
                    report_tmp.write_text(report_text, encoding="utf-8")
    except OSError as exc:
        raise FedVaultError(f"cannot write output: {exc.strerror or exc}") from exc
    achieved = result.report["achieved"]
    print(
        f"wrote {result.report['rows_out']} of {result.report['rows_in']} rows to {args.output} "
        f"(k={achieved['k']}, suppressed {result.report['suppressed_records']})"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    return _detect(args) if args.detect else _anonymize(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault anonymize`."""
    parser = subparsers.add_parser(
        "anonymize",
        help="anonymize a CSV under a policy, or draft a policy with --detect",
        description="Drop or pseudonymize direct identifiers and generalize quasi-identifiers "
        "(Mondrian) until the policy's k-anonymity, l-diversity and t-closeness targets hold. "
        "Nothing is written unless every target is met within the suppression limit. "
        "With --detect FILE.csv, print a draft policy (TOML) for the file instead.",
        epilog="Policy format and metrics: docs/anonymization.md",
    )
    parser.add_argument("input", nargs="?", metavar="IN.csv", help="table to anonymize")
    parser.add_argument("--policy", metavar="POLICY.toml", help="anonymization policy")
    parser.add_argument("-o", "--output", metavar="OUT.csv", help="anonymized table to write")
    parser.add_argument("--report", metavar="OUT.json", help="also write the metrics as JSON")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the site's state directory; holds pseudonym.key (created 0600 if absent)",
    )
    parser.add_argument(
        "--detect", metavar="FILE.csv", help="scan FILE.csv and print a draft policy"
    )
    parser.set_defaults(func=_run)
