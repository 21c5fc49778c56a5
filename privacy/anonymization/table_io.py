"""Reading a site's CSV strictly, as text, so nothing is guessed before the policy applies.

Every cell stays a string: zip codes keep their leading zeros, and each column's type is
decided by the policy, not by pandas. A file that is missing, empty, not UTF-8, or not a
rectangular CSV is refused with one line naming the problem.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd

from privacy.errors import FedVaultError


def read_table_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The CSV at `path` as a DataFrame of strings (header row required, at least one row)."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise FedVaultError(f"{source} does not exist") from None
    except IsADirectoryError:
        raise FedVaultError(f"{source} is a directory, not a CSV file") from None
    except OSError as exc:
        raise FedVaultError(f"cannot read {source}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FedVaultError(f"{source} is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise FedVaultError(f"{source} is empty")
    if "\x00" in text:
        raise FedVaultError(f"{source} is not valid CSV: it contains NUL bytes (a binary file?)")
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), strict=True) if row]
    except csv.Error as exc:
        raise FedVaultError(f"{source} is not valid CSV: {exc}") from None
    header, body = _check_header(rows[0], source), rows[1:]
    if not body:
        raise FedVaultError(f"{source} has a header but no rows")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise FedVaultError(
                f"{source} is not valid CSV: record {number} has {len(row)} fields, "
                f"the header has {len(header)}"
            )
    columns = zip(header, zip(*body, strict=True), strict=True)
    return pd.DataFrame({name: pd.Series(values, dtype=str) for name, values in columns})


def _check_header(header: list[str], source: Path) -> list[str]:
    names = [name.strip() for name in header]
    if any(not name for name in names):
        raise FedVaultError(f"{source} has an empty column name in its header")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise FedVaultError(f"{source} has duplicate column name(s): {', '.join(duplicates)}")
    return names
