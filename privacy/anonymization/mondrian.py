"""Mondrian multidimensional partitioning (LeFevre, DeWitt, Ramakrishnan, ICDE 2006).

Records are split recursively: pick the quasi-identifier whose range is widest (normalized),
cut it at the median, and keep the cut only if both halves still meet every target (at least k
records; l distinct values or entropy >= log l of each sensitive column; earth mover's distance
to the whole table's distribution <= t). A partition no dimension can cut is released with every
quasi-identifier generalized to its range. Because each half must meet the targets, every
released group meets them by construction; the pipeline checks the output again anyway.

Quasi-identifiers marked `fixed` are never generalized: records are first grouped by their
fixed values (strata) and Mondrian runs inside each stratum. A stratum that cannot meet the
targets is suppressed as a whole, up to the policy's `max_suppression`; beyond that the run
fails instead of weakening a target. The t-closeness reference stays the whole table's
distribution, suppressed strata included, so whether a stratum passes never depends on which
others were suppressed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privacy.anonymization.generalize import Dimension
from privacy.anonymization.metrics import SensitiveColumn, emd, entropy
from privacy.anonymization.policy import Targets
from privacy.errors import FedVaultError

TOLERANCE = 1e-9
"""Slack for floating-point comparisons of entropy and distance against their targets."""


@dataclass(frozen=True)
class Partitioning:
    """Released groups (record positions) and the suppressed record positions."""

    groups: list[np.ndarray]
    suppressed: np.ndarray


class _Constraints:
    """Decides whether a group with given sensitive-value counts meets the targets."""

    def __init__(self, targets: Targets, sensitive: list[SensitiveColumn]):
        self.targets = targets
        self.sensitive = sensitive

    def counts(self, rows: np.ndarray) -> list[np.ndarray]:
        return [np.bincount(column.codes[rows], minlength=column.size) for column in self.sensitive]

    def violation(self, size: int, counts: list[np.ndarray]) -> str | None:
        """Why a group fails the targets, or None when it meets them."""
        targets = self.targets
        if size < targets.k:
            return f"{size} records, fewer than k={targets.k}"
        for column, column_counts in zip(self.sensitive, counts, strict=True):
            if targets.l is not None:
                if targets.l_kind == "distinct":
                    distinct = int(np.count_nonzero(column_counts))
                    if distinct < targets.l:
                        return f"{distinct} distinct value(s) of {column.name!r}, l={targets.l}"
                else:
                    diversity = float(np.exp(entropy(column_counts / size)))
                    if diversity < targets.l - TOLERANCE * targets.l:
                        return (
                            f"entropy of {column.name!r} allows l={diversity:.2f} at most, "
                            f"l={targets.l} (entropy)"
                        )
            if targets.t is not None:
                distance = float(emd(column_counts / size, column.reference, column.ordered))
                if distance > targets.t + TOLERANCE:
                    return f"distance {distance:.3f} of {column.name!r} above t={targets.t:g}"
        return None


def partition(
    dimensions: list[Dimension], sensitive: list[SensitiveColumn], targets: Targets, rows: int
) -> Partitioning:
    """Partition `rows` records so that every group meets `targets`, suppressing if allowed."""
    fixed = [dim for dim in dimensions if dim.fixed]
    free = [dim for dim in dimensions if not dim.fixed]
    constraints = _Constraints(targets, sensitive)
    groups: list[np.ndarray] = []
    failed: list[tuple[np.ndarray, str]] = []
    for stratum in _strata(fixed, rows):
        counts = constraints.counts(stratum)
        reason = constraints.violation(len(stratum), counts)
        if reason is None:
            groups.extend(_mondrian(stratum, counts, free, constraints))
        else:
            failed.append((stratum, reason))
    removed = sum(len(stratum) for stratum, _ in failed)
    if failed and (not groups or removed > targets.max_suppression * rows):
        raise FedVaultError(_unmet_message(targets, fixed, failed, removed, rows))
    suppressed = np.sort(np.concatenate([s for s, _ in failed])) if failed else np.array([], int)
    return Partitioning(groups=groups, suppressed=suppressed)


def _strata(fixed: list[Dimension], rows: int) -> list[np.ndarray]:
    """Record positions grouped by their values of the fixed quasi-identifiers."""
    if not fixed:
        return [np.arange(rows)]
    keys = np.stack([dim.codes for dim in fixed], axis=1)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def _unmet_message(
    targets: Targets,
    fixed: list[Dimension],
    failed: list[tuple[np.ndarray, str]],
    removed: int,
    rows: int,
) -> str:
    stratum, reason = max(failed, key=lambda item: len(item[0]))
    if not fixed:
        return f"the table cannot meet {targets.describe()}: {reason}"
    first = stratum[0]
    where = ", ".join(
        f"{dim.name}={dim.label(dim.codes[first], dim.codes[first])}" for dim in fixed
    )
    return (
        f"cannot meet {targets.describe()} within max_suppression="
        f"{targets.max_suppression:.1%}: {removed} of {rows} records ({removed / rows:.1%}) "
        f"would be suppressed (e.g. {where}: {reason})"
    )


def _mondrian(
    rows: np.ndarray,
    counts: list[np.ndarray],
    dimensions: list[Dimension],
    constraints: _Constraints,
) -> list[np.ndarray]:
    done: list[np.ndarray] = []
    stack = [(rows, counts)]
    k = constraints.targets.k
    while stack:
        part, part_counts = stack.pop()
        halves = _split(part, part_counts, dimensions, constraints) if len(part) >= 2 * k else None
        if halves is None:
            done.append(part)
        else:
            stack.extend(halves)
    return done


def _split(
    rows: np.ndarray,
    counts: list[np.ndarray],
    dimensions: list[Dimension],
    constraints: _Constraints,
) -> tuple[tuple[np.ndarray, list[np.ndarray]], ...] | None:
    """Cut `rows` at the median of its widest dimension that allows a valid cut."""
    size = len(rows)
    k = constraints.targets.k
    candidates = []
    for index, dim in enumerate(dimensions):
        values = dim.codes[rows]
        lo, hi = int(values.min()), int(values.max())
        if lo < hi:
            candidates.append((-dim.span(lo, hi), index, values, lo))
    candidates.sort(key=lambda item: (item[0], item[1]))
    for _, _, values, lo in candidates:
        left_sizes = np.cumsum(np.bincount(values - lo))[:-1]
        allowed = np.flatnonzero((left_sizes >= k) & (left_sizes <= size - k))
        if allowed.size == 0:
            continue
        cut = allowed[np.argmin(np.abs(2 * left_sizes[allowed] - size))]
        in_left = values <= lo + cut
        left, right = rows[in_left], rows[~in_left]
        left_counts = constraints.counts(left)
        right_counts = [total - part for total, part in zip(counts, left_counts, strict=True)]
        if (
            constraints.violation(len(left), left_counts) is None
            and constraints.violation(len(right), right_counts) is None
        ):
            return (left, left_counts), (right, right_counts)
    return None
