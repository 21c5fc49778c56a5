"""Typed values out of table columns, with one clear error for a cell that does not fit.

Site tables arrive as CSV text, where a stray "n/a" in a numeric column silently turns the
whole column into text. Every column the anonymizer reasons about is parsed here, and a value
of the wrong kind stops the run naming the column, the row (1-based, header excluded) and the
value. Rows are named by the table's index, which cleansing keeps at each row's position in
the input, so a message names the row the operator sees in the file even after rows were
dropped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from privacy.errors import FedVaultError

MOSTLY_NUMERIC = 0.9
"""An untyped column whose values are at least this share numbers is treated as numeric."""

_ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"


def text_values(series: pd.Series) -> pd.Series:
    """The column as stripped strings; missing cells become ""."""
    codes, uniques = pd.factorize(series, use_na_sentinel=False)
    stripped = np.array(["" if pd.isna(value) else str(value).strip() for value in uniques])
    return pd.Series(stripped[codes] if len(codes) else [], index=series.index, dtype=object)


def data_row(series: pd.Series, position: int) -> int:
    """The 1-based input row of the cell at `position` (see the module docstring)."""
    return int(series.index[position]) + 1


def numbers_or_nan(text: pd.Series) -> np.ndarray:
    """Float value of each text cell; NaN where it is empty or not a finite number."""
    codes, uniques = pd.factorize(text)
    parsed = pd.to_numeric(pd.Series(uniques, dtype=object), errors="coerce").to_numpy(float)
    parsed = parsed.copy()
    parsed[~np.isfinite(parsed)] = np.nan
    return parsed[codes] if len(codes) else np.array([], dtype=float)


def require_filled(series: pd.Series, name: str) -> None:
    """Refuse empty cells (quasi-identifiers must have a value to be generalized)."""
    empty = (text_values(series) == "").to_numpy()
    if empty.any():
        row = data_row(series, int(np.flatnonzero(empty)[0]))
        raise FedVaultError(f"column {name!r} has an empty cell at row {row}; fill or remove it")


def parse_numbers(series: pd.Series, name: str) -> np.ndarray:
    """Float values of a numeric column; empty cells become NaN, anything else must parse."""
    if pd.api.types.is_bool_dtype(series):
        raise FedVaultError(f"column {name!r} holds true/false values, not numbers")
    if pd.api.types.is_numeric_dtype(series):
        numbers = series.to_numpy(dtype=float)
        filled = ~np.isnan(numbers)
    else:
        text = text_values(series)
        numbers = numbers_or_nan(text)
        filled = (text != "").to_numpy()
    bad = filled & ~np.isfinite(numbers)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise FedVaultError(
            f"column {name!r} mixes numbers and text: row {data_row(series, row)} has "
            f"{series.iloc[row]!r}"
        )
    return numbers


def parse_dates(series: pd.Series, name: str) -> pd.DatetimeIndex:
    """Dates of a date column (ISO YYYY-MM-DD text, or a datetime column)."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return pd.DatetimeIndex(series)
    text = text_values(series)
    dates = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    bad = (dates.isna() & (text != "")).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise FedVaultError(
            f"column {name!r} holds dates but row {data_row(series, row)} has "
            f"{text.iloc[row]!r} (expected YYYY-MM-DD)"
        )
    return pd.DatetimeIndex(dates)


def numeric_share(series: pd.Series) -> float:
    """Share of the non-empty cells that parse as finite numbers (1.0 for numeric dtypes)."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return 1.0
    text = text_values(series)
    filled = text[text != ""]
    if filled.empty:
        return 0.0
    return float(np.isfinite(numbers_or_nan(filled)).mean())


def looks_like_dates(series: pd.Series) -> bool:
    """True when every non-empty cell is an ISO date (or the column is a datetime column)."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return True
    text = text_values(series)
    filled = text[text != ""]
    distinct = pd.Series(filled.unique(), dtype=object)
    return not distinct.empty and bool(distinct.str.match(_ISO_DATE).all())


def check_value_type(series: pd.Series, name: str, declared: str | None) -> bool:
    """Check a kept or sensitive column; return True when it is numeric.

    A column declared numeric must parse entirely; an undeclared column that is mostly numbers
    but not entirely is refused as mixed (declare type = "category" to keep it as text).
    """
    if declared == "category":
        return False
    if declared == "numeric" or numeric_share(series) >= MOSTLY_NUMERIC:
        parse_numbers(series, name)
        return True
    return False
