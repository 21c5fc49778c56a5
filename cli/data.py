"""`fedvault data synth`: synthetic site tables, generated offline.

Researchers and tests need realistic tables with identifiers to try anonymization policies
and tabular training on, without touching anyone's records.
"""

from __future__ import annotations

import argparse

from privacy.errors import FedVaultError
from tasks.clinic import CLINIC_COLUMNS, write_clinic_csv

DATASETS = ("clinic",)


def _synth(args: argparse.Namespace) -> int:
    if args.rows < 1:
        raise FedVaultError(f"--rows must be a positive integer, got {args.rows}")
    write_clinic_csv(args.rows, args.seed, args.output)
    print(f"wrote {args.rows} {args.dataset} rows to {args.output}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault data`."""
    parser = subparsers.add_parser(
        "data",
        help="generate synthetic site data",
        description="Work with site data files.",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = actions.add_parser(
        "synth",
        help="write a synthetic table as CSV",
        description="Write a synthetic table as CSV (atomically: a failed run leaves no file). "
        "clinic: patients of five hospitals with direct identifiers (name, email, phone, "
        "national_id), quasi-identifiers (birth_date, sex, zip), hospital, a diagnosis, "
        "clinical measurements and a 0/1 readmission label. Columns: "
        + ", ".join(CLINIC_COLUMNS)
        + ". The same seed always gives the same file.",
    )
    synth.add_argument("dataset", choices=DATASETS, help="which table to generate")
    synth.add_argument("--rows", type=int, required=True, help="number of rows (positive)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("-o", "--output", required=True, metavar="FILE.csv", help="CSV to write")
    synth.set_defaults(func=_synth)
