"""Quasi-identifiers as ordered domains that can be cut into ranges and printed generalized.

Each quasi-identifier column first gets the recoding its policy asks for (bins, top/bottom
coding, dates to month or year, zip prefixes, rare categories merged). The recoded values are
the *atoms* of an ordered domain; Mondrian then cuts that domain into ranges of atoms, and a
`Dimension` turns a range back into a cell ("30-39", "[1980-1984]", "021**", "respiratory")
and into its normalized certainty penalty: the share of the column's original domain the cell
covers, 0 for an exact value and 1 for a fully suppressed one.
"""

from __future__ import annotations

import bisect
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd

from privacy.anonymization.detect import is_zip_header
from privacy.anonymization.policy import ColumnRule
from privacy.anonymization.values import (
    data_row,
    looks_like_dates,
    numeric_share,
    parse_dates,
    parse_numbers,
    require_filled,
    text_values,
)
from privacy.errors import FedVaultError

OTHER = "other"
"""The category rare values are merged into (`min_count`)."""

_NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"


@dataclass
class Dimension(ABC):
    """One quasi-identifier: an atom code per record and the ordered atoms behind the codes.

    `start[a]` and `end[a]` place atom `a` on a line whose full length is `scale`; Mondrian
    uses them to find the widest dimension of a partition.
    """

    name: str
    kind: str
    codes: np.ndarray
    start: np.ndarray
    end: np.ndarray
    scale: float
    fixed: bool
    recoding: str

    @property
    def atoms(self) -> int:
        """Number of distinct recoded values."""
        return len(self.start)

    def span(self, lo: int, hi: int) -> float:
        """Normalized width of the atom range lo..hi (0 for one atom)."""
        return float(self.end[hi] - self.start[lo]) / self.scale

    @abstractmethod
    def label(self, lo: int, hi: int) -> str:
        """The generalized cell for the atom range lo..hi."""

    def ncp(self, lo: int, hi: int) -> float:
        """Normalized certainty penalty of the cell for lo..hi."""
        return self.span(lo, hi)


@dataclass
class NumericDimension(Dimension):
    """Numbers, raw or binned, with optional open-ended top and bottom codes."""

    low: np.ndarray  # atom lower bound (-inf for the bottom code)
    high: np.ndarray  # atom upper bound (+inf for the top code)
    high_inclusive: np.ndarray
    integers: bool

    def label(self, lo: int, hi: int) -> str:
        lower, upper, inclusive = self.low[lo], self.high[hi], bool(self.high_inclusive[hi])
        if self.integers and not inclusive and math.isfinite(upper):
            upper, inclusive = upper - 1, True
        if not math.isfinite(lower) and not math.isfinite(upper):
            return "*"
        if not math.isfinite(lower):
            if self.integers:
                return f"<{_num(upper + 1)}"
            return f"<={_num(upper)}" if inclusive else f"<{_num(upper)}"
        if not math.isfinite(upper):
            return f"{_num(lower)}+"
        if lower == upper:
            return _num(lower)
        if not inclusive:
            return f"[{_num(lower)}, {_num(upper)})"
        if lower < 0:
            return f"[{_num(lower)}, {_num(upper)}]"
        return f"{_num(lower)}-{_num(upper)}"


@dataclass
class DateDimension(Dimension):
    """Dates at day, month or year granularity; positions are days."""

    periods: np.ndarray  # period number per atom (day ordinal, month count, or year)
    granularity: str

    def label(self, lo: int, hi: int) -> str:
        first, last = self._format(self.periods[lo]), self._format(self.periods[hi])
        if lo == hi:
            return first
        return f"[{first}-{last}]" if self.granularity == "year" else f"[{first}..{last}]"

    def _format(self, period: int) -> str:
        if self.granularity == "year":
            return str(int(period))
        if self.granularity == "month":
            return f"{int(period) // 12:04d}-{int(period) % 12 + 1:02d}"
        return str(np.datetime64(int(period), "D"))


@dataclass
class ZipDimension(Dimension):
    """Zip codes in lexicographic order; a range prints as its common prefix, "021**"."""

    values: list[str]  # sorted atoms (possibly already masked, "021**")

    def label(self, lo: int, hi: int) -> str:
        if lo == hi:
            return self.values[lo]
        first, last = self.values[lo], self.values[hi]
        prefix = _common_prefix(first.split("*")[0], last.split("*")[0])
        return prefix + "*" * (max(len(first), len(last)) - len(prefix))

    def ncp(self, lo: int, hi: int) -> float:
        if lo == hi:
            return self.span(lo, hi)
        prefix = self.label(lo, hi).split("*")[0]
        first = bisect.bisect_left(self.values, prefix)
        last = bisect.bisect_left(self.values, prefix + "\x7f") - 1
        return self.span(first, last)


@dataclass
class CategoryDimension(Dimension):
    """Categories, ordered by a user hierarchy (depth first) or alphabetically."""

    values: list[str]
    ancestors: list[list[str]]  # per atom: its groups from the leaf's parent up to the root

    @property
    def hierarchical(self) -> bool:
        """True when a user hierarchy orders and names the groups."""
        return bool(self.ancestors and self.ancestors[0])

    def label(self, lo: int, hi: int) -> str:
        if lo == hi:
            return self.values[lo]
        if self.hierarchical:
            return self._common_group(lo, hi) or "*"
        if lo == 0 and hi == self.atoms - 1:
            return "*"
        return "{" + ",".join(self.values[lo : hi + 1]) + "}"

    def ncp(self, lo: int, hi: int) -> float:
        if lo == hi or not self.hierarchical:
            return self.span(lo, hi)
        group = self._common_group(lo, hi)
        if group is None:
            return 1.0
        members = [i for i, groups in enumerate(self.ancestors) if group in groups]
        return self.span(members[0], members[-1])

    def _common_group(self, lo: int, hi: int) -> str | None:
        last = set(self.ancestors[hi])
        return next((group for group in self.ancestors[lo] if group in last), None)


def build_dimension(rule: ColumnRule, series: pd.Series) -> Dimension:
    """Recode one quasi-identifier column as its policy says and index its atoms."""
    require_filled(series, rule.name)
    kind = rule.type or infer_quasi_type(rule.name, series)
    builders = {
        "numeric": _numeric_dimension,
        "date": _date_dimension,
        "zip": _zip_dimension,
        "category": _category_dimension,
    }
    return builders[kind](rule, series)


def infer_quasi_type(name: str, series: pd.Series) -> str:
    """The type of an untyped quasi-identifier: date, zip, numeric or category."""
    if looks_like_dates(series):
        return "date"
    if is_zip_header(name):
        return "zip"
    if numeric_share(series) == 1.0:
        return "numeric"
    return "category"


def range_midpoints(cells: pd.Series) -> pd.Series:
    """Numbers for generalized numeric cells, for models that need numbers.

    "34" -> 34, "30-39" -> 34.5, "[20, 25)" -> 22.5, "90+" -> 90, "<18" -> 18, "*" -> NaN,
    and year ranges "[1980-1984]" -> 1982.
    Cells that are already numbers pass through.
    """
    if pd.api.types.is_numeric_dtype(cells):
        return cells.astype(float)
    return text_values(cells).map(_midpoint).astype(float)


def _midpoint(cell: str) -> float:
    patterns = (
        (rf"^({_NUMBER})$", lambda a: a),
        (rf"^({_NUMBER})-({_NUMBER})$", lambda a, b: (a + b) / 2),
        (rf"^\[({_NUMBER}), ({_NUMBER})[\])]$", lambda a, b: (a + b) / 2),
        (rf"^\[({_NUMBER})-({_NUMBER})\]$", lambda a, b: (a + b) / 2),
        (rf"^({_NUMBER})\+$", lambda a: a),
        (rf"^<=?({_NUMBER})$", lambda a: a),
    )
    for pattern, combine in patterns:
        match = re.match(pattern, cell, flags=re.IGNORECASE)
        if match:
            return combine(*(float(group) for group in match.groups()))
    return math.nan


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.10g}"


def _common_prefix(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[size] == b[size]:
        size += 1
    return a[:size]


def _positions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Start/end of atoms that each cover `counts` original values, laid end to end."""
    cumulative = np.cumsum(counts).astype(float)
    return cumulative - counts, cumulative - 1, max(float(cumulative[-1]) - 1, 1.0)


def _numeric_dimension(rule: ColumnRule, series: pd.Series) -> NumericDimension:
    values = parse_numbers(series, rule.name)
    bottom = -math.inf if rule.bottom is None else rule.bottom
    top = math.inf if rule.top is None else rule.top
    binned = rule.width is not None or bool(rule.bins)
    if rule.width is not None:
        lower = np.floor(values / rule.width) * rule.width
        upper = lower + rule.width
        recoding = [f"bins of width {_num(rule.width)}"]
    elif rule.bins:
        edges = np.array(rule.bins)
        coded = (values < bottom) | (values >= top)
        outside = ((values < edges[0]) | (values >= edges[-1])) & ~coded
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise FedVaultError(
                f"column {rule.name!r}: value {_num(values[row])} at row {data_row(series, row)} "
                f"is outside the bins [{_num(edges[0])}, {_num(edges[-1])}) "
                "(add top or bottom coding)"
            )
        index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
        lower, upper = edges[index], edges[index + 1]
        recoding = ["bins with edges " + ", ".join(_num(edge) for edge in edges)]
    else:
        lower, upper, recoding = values, values, []
    if rule.top is not None:
        recoding.append(f"values >= {_num(top)} coded {_num(top)}+")
    if rule.bottom is not None:
        recoding.append(f"values < {_num(bottom)} coded <{_num(bottom)}")
    is_bottom, is_top = values < bottom, values >= top
    lower = np.where(is_bottom, -math.inf, np.where(is_top, top, lower))
    upper = np.where(is_bottom, bottom, np.where(is_top, math.inf, upper))
    atom_lower, codes = np.unique(lower, return_inverse=True)
    atom_upper = np.empty(len(atom_lower))
    atom_upper[codes] = upper
    inclusive = np.full(len(atom_lower), not binned) & np.isfinite(atom_lower)
    observed = pd.Series(values).groupby(codes).agg(["min", "max"])
    return NumericDimension(
        name=rule.name,
        kind="numeric",
        codes=codes.astype(np.int64),
        start=observed["min"].to_numpy(float),
        end=observed["max"].to_numpy(float),
        scale=float(values.max() - values.min()) or 1.0,
        fixed=rule.fixed,
        recoding="; ".join(recoding) or "none",
        low=atom_lower,
        high=atom_upper,
        high_inclusive=inclusive,
        integers=bool(np.all(values == np.floor(values))),
    )


def _date_dimension(rule: ColumnRule, series: pd.Series) -> DateDimension:
    dates = parse_dates(series, rule.name)
    days = dates.to_numpy(dtype="datetime64[D]").astype(np.int64)
    granularity = rule.date or "day"
    if granularity == "year":
        periods = dates.year.to_numpy(np.int64)
    elif granularity == "month":
        periods = dates.year.to_numpy(np.int64) * 12 + dates.month.to_numpy(np.int64) - 1
    else:
        periods = days
    atom_periods, codes = np.unique(periods, return_inverse=True)
    observed = pd.Series(days).groupby(codes).agg(["min", "max"])
    return DateDimension(
        name=rule.name,
        kind="date",
        codes=codes.astype(np.int64),
        start=observed["min"].to_numpy(float),
        end=observed["max"].to_numpy(float),
        scale=float(days.max() - days.min()) or 1.0,
        fixed=rule.fixed,
        recoding=f"dates to {granularity}" if granularity != "day" else "none",
        periods=atom_periods,
        granularity=granularity,
    )


def _zip_dimension(rule: ColumnRule, series: pd.Series) -> ZipDimension:
    text = text_values(series)
    bad = ~text.str.fullmatch(r"\d+")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise FedVaultError(
            f"column {rule.name!r} holds zip codes but row {data_row(series, row)} has "
            f"{text.iloc[row]!r} (expected digits only)"
        )
    keep = rule.prefix
    masked = text if keep is None else text.map(lambda z: z[:keep] + "*" * max(len(z) - keep, 0))
    atoms, codes = np.unique(masked.to_numpy(dtype=str), return_inverse=True)
    originals = pd.Series(text.to_numpy()).groupby(codes).nunique().to_numpy()
    start, end, scale = _positions(originals)
    return ZipDimension(
        name=rule.name,
        kind="zip",
        codes=codes.astype(np.int64),
        start=start,
        end=end,
        scale=scale,
        fixed=rule.fixed,
        recoding=f"zip to {rule.prefix}-digit prefix" if rule.prefix is not None else "none",
        values=[str(atom) for atom in atoms],
    )


def _category_dimension(rule: ColumnRule, series: pd.Series) -> CategoryDimension:
    text = text_values(series)
    if rule.hierarchy:
        order, ancestors = _hierarchy_order(rule.hierarchy)
        unknown = ~text.isin(order)
        if unknown.any():
            row = int(np.flatnonzero(unknown.to_numpy())[0])
            raise FedVaultError(
                f"column {rule.name!r}: value {text.iloc[row]!r} at row {data_row(series, row)} "
                "is not in its hierarchy"
            )
        seen = set(text.unique())
        present = [value for value in order if value in seen]
        position = {value: i for i, value in enumerate(present)}
        codes = text.map(position).to_numpy(np.int64)
        start, end, scale = _positions(np.ones(len(present)))
        return CategoryDimension(
            name=rule.name,
            kind="category",
            codes=codes,
            start=start,
            end=end,
            scale=scale,
            fixed=rule.fixed,
            recoding="user hierarchy",
            values=present,
            ancestors=[ancestors[value] for value in present],
        )
    merged = text
    recoding = "none"
    if rule.min_count is not None:
        counts = text.value_counts()
        rare = counts.index[counts < rule.min_count]
        merged = text.where(~text.isin(rare), OTHER)
        recoding = f"categories with fewer than {rule.min_count} records merged into {OTHER!r}"
    atoms, codes = np.unique(merged.to_numpy(dtype=str), return_inverse=True)
    originals = pd.Series(text.to_numpy()).groupby(codes).nunique().to_numpy()
    start, end, scale = _positions(originals)
    return CategoryDimension(
        name=rule.name,
        kind="category",
        codes=codes.astype(np.int64),
        start=start,
        end=end,
        scale=scale,
        fixed=rule.fixed,
        recoding=recoding,
        values=[str(atom) for atom in atoms],
        ancestors=[[] for _ in atoms],
    )


def _hierarchy_order(groups: dict[str, tuple[str, ...]]) -> tuple[list[str], dict[str, list[str]]]:
    """Leaves depth first (so every group's leaves are contiguous) and each leaf's groups."""
    members = {member for children in groups.values() for member in children}
    roots = [group for group in groups if group not in members]
    order: list[str] = []
    ancestors: dict[str, list[str]] = {}

    def visit(node: str, path: list[str]) -> None:
        if node not in groups:
            order.append(node)
            ancestors[node] = list(reversed(path))
            return
        for child in groups[node]:
            visit(child, [*path, node])

    for root in roots:
        visit(root, [])
    return order, ancestors
