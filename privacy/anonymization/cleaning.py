"""Cleansing a site's raw table, as its policy's [cleaning] table declares, before any use.

DP-SGD protects one *record*: a person entered twice loses twice the privacy the report
claims. A silently "fixed" row is no better: nobody can audit a change nobody recorded. So
every change is declared in the policy, counted in the report, and a table that needs a change
the policy does not declare is refused with one line naming the column and the row (1-based,
header excluded, as a spreadsheet shows it).

Steps, in this order; each sees the rows the steps before it kept:

1. refuse what has no rule: an empty cell (or one of `missing_values`) in a column without a
   `missing` rule, a non-number in a numeric rule's column without `malformed`, exact
   duplicate records without `duplicates`. Identifiers the policy drops are exempt (they never
   leave the site), except the person column. The whole input is checked, also rows that a
   later step would drop, so what is refused does not depend on the order of the rules.
2. malformed numbers: drop the row, or treat the cell as missing;
3. values outside `min`/`max` or `categories`: drop the row, clip to the bound, or recode to
   "other";
4. missing cells under `missing = "drop"`: drop the row;
5. exact duplicate records (every cell equal as text): keep the first;
6. records of one person (equal `person` values after `normalize_identifier`): keep the first,
   merge them (the first non-missing value of each column), or keep the first
   `max_records_per_person`;
7. the remaining missing cells: impute (median, mean or mode of the kept rows, or a constant),
   recode to an explicit category, or leave empty (`keep`).

Imputed statistics are taken after deduplication, so that a duplicated person does not weigh
twice. The report holds rules and counts, never a value computed from the data: it leaves the
site with the anonymization report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from privacy.anonymization.detect import detect_column
from privacy.anonymization.generalize import OTHER
from privacy.anonymization.policy import CleaningRule, Policy
from privacy.anonymization.pseudonymize import normalize_identifier
from privacy.anonymization.values import numbers_or_nan, text_values
from privacy.errors import FedVaultError

STEPS = ("malformed", "outside", "missing", "duplicates", "per_person")
"""The steps that drop rows, in the order they run (the report counts rows per step)."""


@dataclass(frozen=True)
class CleaningResult:
    """The cleaned table and a JSON-safe report of every change, by column and by rule.

    The table's index is each kept row's 0-based position in the input, so later messages can
    still name the row of the input file.
    """

    table: pd.DataFrame
    report: dict[str, Any]


def check_columns(table: pd.DataFrame, policy: Policy) -> None:
    """Refuse a table whose columns do not match the policy: every column needs a role.

    A column nobody gave a role is refused even if it looks harmless, because a detector
    that finds nothing proves nothing (an age, a free-text note, a column of ids).
    """
    if table.shape[1] == 0 or table.empty:
        raise FedVaultError("the table is empty")
    names = [str(name) for name in table.columns]
    if len(set(names)) != len(names):
        raise FedVaultError("the table has duplicate column names")
    unknown = [name for name in policy.columns if name not in names]
    if unknown:
        raise FedVaultError(
            f"{policy.source} names column(s) not in the table: {', '.join(unknown)}"
        )
    unlisted = [name for name in names if name not in policy.columns]
    if unlisted:
        described = []
        for name in unlisted:
            finding = detect_column(name, table[name])
            hint = f" ({finding.reason})" if finding.role != "keep" else ""
            described.append(f"{name!r}{hint}")
        raise FedVaultError(
            f"{policy.source} gives no role to column(s) {', '.join(described)}; every column "
            'needs one (role = "keep" releases it as it is; `fedvault anonymize --detect` '
            "drafts them all)"
        )


def clean_table(table: pd.DataFrame, policy: Policy) -> CleaningResult:
    """Cleanse `table` under `policy` (see the module docstring for the steps and refusals)."""
    check_columns(table, policy)
    return _Cleaner(table.reset_index(drop=True), policy).run()


class _Cleaner:
    """One cleansing run: the working table, which rows are kept, which cells are missing."""

    def __init__(self, table: pd.DataFrame, policy: Policy) -> None:
        self.policy = policy
        self.cleaning = policy.cleaning
        self.table = table.copy()
        self.raw = {name: text_values(table[name]).to_numpy(object) for name in table.columns}
        tokens = np.array(["", *self.cleaning.missing_values], dtype=object)
        self.missing = {name: np.isin(text, tokens) for name, text in self.raw.items()}
        self.keep = np.ones(len(table), dtype=bool)
        self.dropped: Counter[str] = Counter()
        self.counts = {
            name: Counter({key: 0 for key in _column_counters(rule)})
            for name, rule in self.cleaning.columns.items()
        }
        self.numbers = {
            name: numbers_or_nan(pd.Series(self.raw[name]))
            for name, rule in self.cleaning.columns.items()
            if rule.numeric
        }

    def run(self) -> CleaningResult:
        self._refuse_unruled()
        for name, rule in self.cleaning.columns.items():
            self.counts[name]["missing_cells"] = int(self.missing[name].sum())
            if rule.malformed:
                self._malformed(name, rule)
        for name, rule in self.cleaning.columns.items():
            if rule.outside:
                self._outside(name, rule)
        for name, rule in self.cleaning.columns.items():
            if rule.missing == "drop":
                self._drop(self.missing[name], "missing", name)
        duplicates = self._duplicates()
        per_person = self._per_person() if self.cleaning.person else None
        for name, rule in self.cleaning.columns.items():
            if rule.missing not in (None, "drop"):
                self._fill_missing(name, rule)
        return CleaningResult(
            table=self.table.loc[self.keep], report=self._report(duplicates, per_person)
        )

    def _refuse_unruled(self) -> None:
        rules = self.cleaning.columns
        for name in self.table.columns:
            column = self.policy.columns[name]
            if (
                column.role == "identifier"
                and column.action == "drop"
                and name != self.cleaning.person
            ):
                continue
            rule = rules.get(name)
            if rule is None or rule.missing is None:
                missing = np.flatnonzero(self.missing[name])
                if missing.size:
                    self._refuse_missing(name, int(missing[0]))
            if rule is not None and rule.numeric and rule.malformed is None:
                bad = np.flatnonzero(~self.missing[name] & np.isnan(self.numbers[name]))
                if bad.size:
                    row = int(bad[0])
                    raise FedVaultError(
                        f"column {name!r} has {self.raw[name][row]!r} at row {row + 1}, which "
                        "is not a number, and the policy has no [cleaning] rule for it "
                        '(malformed = "drop" or "missing")'
                    )
        if self.cleaning.duplicates is None:
            frame = pd.DataFrame(self.raw)
            repeated = np.flatnonzero(frame.duplicated(keep="first").to_numpy())
            if repeated.size:
                row = int(repeated[0])
                first = int(np.flatnonzero((frame == frame.iloc[row]).all(axis=1).to_numpy())[0])
                raise FedVaultError(
                    f"row {row + 1} repeats row {first + 1} exactly and the policy has no "
                    '[cleaning] rule for duplicates (duplicates = "drop" or "keep")'
                )

    def _refuse_missing(self, name: str, row: int) -> None:
        value = self.raw[name][row]
        what = "an empty cell" if value == "" else f"a missing value ({value!r})"
        raise FedVaultError(
            f"column {name!r} has {what} at row {row + 1} and the policy has no [cleaning] "
            "rule for it"
        )

    def _drop(self, rows: np.ndarray, step: str, name: str | None = None) -> None:
        """Drop `rows` (a mask); each row is counted once, for the first step that drops it."""
        rows = rows & self.keep
        count = int(rows.sum())
        self.keep &= ~rows
        self.dropped[step] += count
        if name is not None:
            self.counts[name]["rows_dropped"] += count

    def _malformed(self, name: str, rule: CleaningRule) -> None:
        bad = ~self.missing[name] & np.isnan(self.numbers[name])
        self.counts[name]["malformed_cells"] = int(bad.sum())
        if rule.malformed == "drop":
            self._drop(bad, "malformed", name)
        else:
            self.missing[name] = self.missing[name] | bad

    def _outside(self, name: str, rule: CleaningRule) -> None:
        present = self.keep & ~self.missing[name]
        values = self.numbers.get(name)
        if rule.categories:
            allowed = np.array(rule.categories, dtype=object)
            outside = present & ~np.isin(self.raw[name], allowed)
        else:
            low = -np.inf if rule.minimum is None else rule.minimum
            high = np.inf if rule.maximum is None else rule.maximum
            clipped = np.clip(values, low, high)
            outside = present & (clipped != values)
        self.counts[name]["outside_cells"] = int(outside.sum())
        if rule.outside == "drop":
            self._drop(outside, "outside", name)
        elif rule.outside == "other":
            self._write(name, outside, OTHER)
            self.counts[name]["cells_recoded"] = int(outside.sum())
        else:
            self._write(name, outside, clipped[outside])
            self.numbers[name] = np.where(outside, clipped, values)
            self.counts[name]["cells_clipped"] = int(outside.sum())

    def _duplicates(self) -> dict[str, Any]:
        frame = pd.DataFrame(self.raw).loc[self.keep]
        repeated = frame.duplicated(keep="first").to_numpy()
        found = int(repeated.sum())
        if self.cleaning.duplicates == "drop":
            rows = np.zeros_like(self.keep)
            rows[frame.index[repeated]] = True
            self._drop(rows, "duplicates")
        return {"rule": self.cleaning.duplicates, "found": found}

    def _per_person(self) -> dict[str, Any]:
        cleaning = self.cleaning
        person = cleaning.person
        kept = np.flatnonzero(self.keep)
        keys = pd.Series(self.raw[person][kept]).map(normalize_identifier)
        groups = pd.factorize(keys)[0]
        rank = pd.Series(groups).groupby(groups).cumcount().to_numpy()
        limit = cleaning.max_records_per_person or 1
        filled = conflicting = 0
        if cleaning.per_person == "merge":
            filled, conflicting = self._merge(kept, groups)
        extra = np.zeros_like(self.keep)
        extra[kept[rank >= limit]] = True
        records = int(extra.sum())
        self._drop(extra, "per_person")
        report = {
            "column": person,
            "rule": cleaning.per_person,
            "people": int(groups.max() + 1) if groups.size else 0,
            "people_with_several_records": int((np.bincount(groups) > 1).sum()),
            "records_removed": records,
        }
        if cleaning.per_person == "merge":
            report.update(cells_filled=filled, conflicting_cells=conflicting)
        return report

    def _merge(self, kept: np.ndarray, groups: np.ndarray) -> tuple[int, int]:
        """Fill each person's first record from their later ones; count fills and conflicts."""
        shared = np.bincount(groups)[groups] > 1
        rows, owners = kept[shared], groups[shared]
        is_first = rows == pd.Series(rows).groupby(owners).transform("first").to_numpy()
        filled = conflicting = 0
        for name in self.table.columns:
            present = ~self.missing[name][rows]
            values = pd.Series(self.raw[name][rows], dtype=object).where(present)
            conflicting += int((values.groupby(owners).nunique() > 1).sum())
            donors = pd.Series(rows[present]).groupby(owners[present]).first()
            need = is_first & ~present & np.isin(owners, donors.index)
            if not need.any():
                continue
            targets = rows[need]
            sources = donors.loc[owners[need]].to_numpy()
            self._write(name, targets, self.table[name].to_numpy(dtype=object)[sources])
            self.missing[name][targets] = False
            if name in self.numbers:
                self.numbers[name][targets] = self.numbers[name][sources]
            filled += len(targets)
        return filled, conflicting

    def _fill_missing(self, name: str, rule: CleaningRule) -> None:
        rows = self.keep & self.missing[name]
        if rule.missing == "keep":
            self._write(name, rows, np.nan if _is_numeric(self.table[name]) else "")
            self.counts[name]["cells_left_empty"] = int(rows.sum())
            return
        if not rows.any():
            return
        present = self.keep & ~self.missing[name]
        if rule.missing in ("median", "mean"):
            values = self.numbers[name][present]
            if values.size == 0:
                raise FedVaultError(
                    f"column {name!r}: every kept value is missing, so the {rule.missing} "
                    "cannot be imputed"
                )
            value: Any = float(np.median(values) if rule.missing == "median" else values.mean())
        elif rule.missing == "mode":
            cells = self.table[name][present]
            modes = (cells if _is_numeric(cells) else text_values(cells)).mode()
            if modes.empty:
                raise FedVaultError(
                    f"column {name!r}: every kept value is missing, so the mode cannot be imputed"
                )
            value = modes.iloc[0]
        else:
            value = rule.fill
        self._write(name, rows, value)
        self.counts[name]["cells_imputed"] = int(rows.sum())

    def _write(self, name: str, rows: np.ndarray, values: Any) -> None:
        """Set cells (`rows`: a mask or positions), numbers as numbers in a numeric column."""
        column = self.table[name]
        if _is_numeric(column) and not isinstance(values, str):
            cells = column.to_numpy(dtype=float, copy=True)
            cells[rows] = values
        else:
            cells = column.to_numpy(dtype=object, copy=True)
            cells[rows] = _as_text(values)
        self.table[name] = pd.Series(cells, index=column.index)

    def _report(self, duplicates: dict[str, Any], per_person: dict[str, Any] | None) -> dict:
        rows_in = len(self.keep)
        columns = {}
        for name, rule in self.cleaning.columns.items():
            columns[name] = {
                "rules": {
                    "missing": rule.missing,
                    "outside": rule.outside,
                    "malformed": rule.malformed,
                },
                **{key: int(value) for key, value in self.counts[name].items()},
            }
        totals = Counter()
        for counts in self.counts.values():
            totals.update(counts)
        return {
            "declared": self.cleaning.declared,
            "rows_in": rows_in,
            "rows_out": int(self.keep.sum()),
            "rows_dropped": rows_in - int(self.keep.sum()),
            "rows_dropped_by_rule": {step: int(self.dropped[step]) for step in STEPS},
            "cells_imputed": int(totals["cells_imputed"]),
            "cells_clipped": int(totals["cells_clipped"]),
            "cells_recoded": int(totals["cells_recoded"]),
            "missing_values": list(self.cleaning.missing_values),
            "duplicates": duplicates,
            "per_person": per_person,
            "max_records_per_person": self.cleaning.max_records_per_person,
            "columns": columns,
        }


def _column_counters(rule: CleaningRule) -> list[str]:
    """The counts the report gives for a column with `rule` (zeros included, never omitted)."""
    keys = ["missing_cells", "rows_dropped"]
    if rule.missing not in (None, "drop", "keep"):
        keys.append("cells_imputed")
    if rule.missing == "keep":
        keys.append("cells_left_empty")
    if rule.malformed:
        keys.append("malformed_cells")
    if rule.outside:
        keys.append("outside_cells")
        keys.append({"clip": "cells_clipped", "other": "cells_recoded"}.get(rule.outside, ""))
    return [key for key in keys if key]


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _as_text(values: Any) -> Any:
    """Numbers as the text a CSV would hold ("120", "27.5"); other values unchanged."""
    if isinstance(values, np.ndarray):
        return np.array([_as_text(value) for value in values], dtype=object)
    if isinstance(values, float | int | np.floating | np.integer) and not isinstance(values, bool):
        number = float(values)
        return str(int(number)) if number.is_integer() else f"{number:.10g}"
    return values
