"""`fedvault anonymize`: cleanse and anonymize a CSV under a site's policy, or draft a policy.

Operators use it to check a policy on their own data before a run, and to export tables that
may leave the site. Outputs appear only when every target is met: the CSV and the report are
written to temporary names and renamed together at the end.

A policy that pseudonymizes needs the site's key. Without --state-dir it lives in the site's
default state directory, $FEDVAULT_HOME/site (FEDVAULT_HOME defaults to ~/.fedvault), created
0700 on first use, so the command runs as written on a fresh machine and every export of the
same site uses the same key. The directory is named in the output.
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
from privacy.anonymization.pseudonymize import KEY_FILE
from privacy.atomic import atomic_path
from privacy.errors import FedVaultError
from privacy.home import fedvault_home


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


def default_state_dir() -> Path:
    """$FEDVAULT_HOME/site, the site state directory when --state-dir is not given."""
    return fedvault_home() / "site"


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
    key = state_dir = None
    if any(rule.action == "pseudonymize" for rule in policy.columns.values()):
        state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
        key = load_or_create_key(state_dir)
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
    report = result.report
    cleaning = report["cleaning"]
    changes = ("rows_dropped", "cells_imputed", "cells_clipped", "cells_recoded")
    if any(cleaning[change] for change in changes):
        by_rule = ", ".join(
            f"{step} {count}" for step, count in cleaning["rows_dropped_by_rule"].items() if count
        )
        print(
            f"cleaned: dropped {cleaning['rows_dropped']} of {cleaning['rows_in']} rows"
            + (f" ({by_rule})" if by_rule else "")
            + f", imputed {cleaning['cells_imputed']} cells, clipped {cleaning['cells_clipped']}, "
            f"recoded {cleaning['cells_recoded']}"
        )
    print(
        f"wrote {report['rows_out']} of {report['rows_in']} rows to {args.output} in shuffled "
        f"order (k={report['achieved']['k']}, suppressed {report['suppressed_records']}); "
        f"{report['release_note']}"
    )
    if state_dir is not None:
        print(f"pseudonym key: {state_dir / KEY_FILE} (site state directory {state_dir})")
    return 0


def _run(args: argparse.Namespace) -> int:
    return _detect(args) if args.detect else _anonymize(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault anonymize`."""
    parser = subparsers.add_parser(
        "anonymize",
        help="anonymize a CSV under a policy, or draft a policy with --detect",
        description="Cleanse the table as the policy's [cleaning] table declares, drop or "
        "pseudonymize direct identifiers and generalize quasi-identifiers (Mondrian) until the "
        "policy's k-anonymity, l-diversity and t-closeness targets hold; the rows come out "
        "shuffled. Every column needs a role in the policy. Nothing is written unless every "
        "target is met within the suppression limit. With --detect FILE.csv, print a complete "
        "draft policy (TOML) for the file instead, with the reason for each role.",
        epilog="Policy format and metrics: docs/anonymization.md",
    )
    parser.add_argument("input", nargs="?", metavar="IN.csv", help="table to anonymize")
    parser.add_argument("--policy", metavar="POLICY.toml", help="anonymization policy")
    parser.add_argument("-o", "--output", metavar="OUT.csv", help="anonymized table to write")
    parser.add_argument("--report", metavar="OUT.json", help="also write the metrics as JSON")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the site's state directory; holds pseudonym.key (created 0600 if absent); "
        "default $FEDVAULT_HOME/site, FEDVAULT_HOME defaulting to ~/.fedvault",
    )
    parser.add_argument(
        "--detect", metavar="FILE.csv", help="scan FILE.csv and print a draft policy"
    )
    parser.set_defaults(func=_run)
