"""Apply a policy to a table: drop or pseudonymize identifiers, generalize quasi-identifiers.

This is the one entry point the client and the CLI call. It checks the table against the
policy before touching anything (unknown columns, unmentioned identifiers, wrong value types,
k larger than the table), runs Mondrian, then measures the released table and refuses to
return it unless it meets every target: a target is never weakened to make a table pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from privacy.anonymization.detect import detect_column
from privacy.anonymization.generalize import Dimension, build_dimension
from privacy.anonymization.metrics import SensitiveColumn, class_ids, privacy_metrics
from privacy.anonymization.mondrian import TOLERANCE, Partitioning, partition
from privacy.anonymization.policy import ColumnRule, Policy, Targets
from privacy.anonymization.pseudonymize import PSEUDONYM_HEX, pseudonymize_series
from privacy.anonymization.values import (
    check_value_type,
    parse_numbers,
    require_filled,
    text_values,
)
from privacy.errors import FedVaultError

METHOD = "Mondrian multidimensional partitioning (LeFevre et al. 2006), median cuts"


@dataclass(frozen=True)
class AnonymizationResult:
    """The released table and a JSON-safe report of what was done and achieved."""

    table: pd.DataFrame
    report: dict[str, Any]


def anonymize_table(
    table: pd.DataFrame, policy: Policy, key: bytes | None = None
) -> AnonymizationResult:
    """Anonymize `table` under `policy`; `key` is needed when the policy pseudonymizes."""
    _check_table(table, policy, key)
    rows = len(table)
    rules = policy.columns
    dimensions = [build_dimension(rules[name], table[name]) for name in policy.names("quasi")]
    sensitive = [_sensitive_column(rules[name], table[name]) for name in policy.names("sensitive")]
    columns = _check_other_columns(table, policy)
    partitioning = partition(dimensions, sensitive, policy.targets, rows)

    released = np.sort(np.concatenate(partitioning.groups))
    output = table.iloc[released].reset_index(drop=True)
    ncp_by_column = _generalize_quasi(output, table, dimensions, partitioning, columns)
    output = _release_identifiers(output, policy, key, columns)
    for column in sensitive:
        columns[column.name] = {
            "role": "sensitive",
            "transformation": "kept; protected by the l and t targets",
            "distance": "ordered" if column.ordered else "equal",
        }

    released_sensitive = [
        SensitiveColumn(c.name, c.codes[released], c.size, c.ordered) for c in sensitive
    ]
    ids = class_ids(output, [dim.name for dim in dimensions])
    suppressed = len(partitioning.suppressed)
    metrics = privacy_metrics(ids, released_sensitive, suppressed, rows, policy.targets.k)
    _verify(metrics, policy.targets)
    information_loss = {
        **metrics["information_loss"],
        "normalized_certainty_penalty": float(np.mean(list(ncp_by_column.values())))
        if ncp_by_column
        else 0.0,
        "ncp_by_column": ncp_by_column,
    }
    report = {
        "policy": policy.source,
        "method": METHOD,
        "targets": _targets_report(policy.targets),
        "rows_in": rows,
        "rows_out": len(output),
        "suppressed_records": suppressed,
        "suppressed_share": suppressed / rows,
        "achieved": {name: metrics[name] for name in ("k", "l_distinct", "l_entropy", "t")},
        "equivalence_classes": metrics["equivalence_classes"],
        "risk": metrics["risk"],
        "information_loss": information_loss,
        "columns": {name: columns[name] for name in table.columns},
    }
    return AnonymizationResult(table=output, report=report)


def _generalize_quasi(
    output: pd.DataFrame,
    table: pd.DataFrame,
    dimensions: list[Dimension],
    partitioning: Partitioning,
    columns: dict[str, dict[str, Any]],
) -> dict[str, float]:
    """Write each released record's generalized cells; return the NCP of each column."""
    rows = len(table)
    group_of = np.empty(rows, dtype=np.int64)
    for index, group in enumerate(partitioning.groups):
        group_of[group] = index
    group_of = group_of[np.sort(np.concatenate(partitioning.groups))]
    ncp_by_column = {}
    for dim in dimensions:
        cells, penalty = _generalize(dim, partitioning)
        output[dim.name] = cells[group_of]
        # A suppressed record loses everything: its penalty is 1.
        ncp_by_column[dim.name] = float(
            (penalty[group_of].sum() + len(partitioning.suppressed)) / rows
        )
        columns[dim.name] = {
            "role": "quasi",
            "type": dim.kind,
            "transformation": _quasi_transformation(dim),
            "distinct_before": int(table[dim.name].nunique()),
            "distinct_after": int(output[dim.name].nunique()),
        }
    return ncp_by_column


def _release_identifiers(
    output: pd.DataFrame, policy: Policy, key: bytes | None, columns: dict[str, dict[str, Any]]
) -> pd.DataFrame:
    """Drop or pseudonymize the direct identifiers."""
    for name in policy.names("identifier"):
        if policy.columns[name].action == "drop":
            output = output.drop(columns=name)
            columns[name] = {"role": "identifier", "transformation": "dropped"}
        else:
            output[name] = pseudonymize_series(output[name], key or b"")
            columns[name] = {
                "role": "identifier",
                "transformation": "pseudonymized: HMAC-SHA256 under the site key, "
                f"first {PSEUDONYM_HEX} hex digits",
            }
    return output


def _check_table(table: pd.DataFrame, policy: Policy, key: bytes | None) -> None:
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
    unlisted = []
    for name in names:
        if name in policy.columns:
            continue
        finding = detect_column(name, table[name])
        if finding.role != "keep":
            unlisted.append(f"{name!r} ({finding.reason})")
    if unlisted:
        raise FedVaultError(
            f"column(s) {', '.join(unlisted)} look like identifiers but have no role in "
            f'{policy.source}; give each a role (role = "keep" if it is not one)'
        )
    if policy.targets.k > len(table):
        raise FedVaultError(
            f"k={policy.targets.k} is larger than the number of rows ({len(table)})"
        )
    pseudonymized = [
        name for name in policy.names("identifier") if policy.columns[name].action == "pseudonymize"
    ]
    if pseudonymized and not key:
        raise FedVaultError(
            f"the policy pseudonymizes {', '.join(pseudonymized)} but no key was given "
            "(the site's state directory holds it)"
        )


def _check_other_columns(table: pd.DataFrame, policy: Policy) -> dict[str, dict[str, Any]]:
    """Type-check kept columns (mixed numbers and text are refused); describe them."""
    report: dict[str, dict[str, Any]] = {}
    for name in table.columns:
        rule = policy.columns.get(name)
        if rule is not None and rule.role != "keep":
            continue
        numeric = check_value_type(table[name], name, rule.type if rule else None)
        report[name] = {
            "role": "keep",
            "type": "numeric" if numeric else "category",
            "transformation": "kept" if rule else "kept (not in the policy, not identifying)",
        }
    return report


def _sensitive_column(rule: ColumnRule, series: pd.Series) -> SensitiveColumn:
    require_filled(series, rule.name)
    numeric = check_value_type(series, rule.name, rule.type)
    ordered = rule.distance == "ordered" if rule.distance else numeric
    if numeric:
        values = parse_numbers(series, rule.name)
        levels, codes = np.unique(values, return_inverse=True)
        return SensitiveColumn(rule.name, codes.astype(np.int64), len(levels), ordered)
    text = text_values(series)
    if ordered and not rule.order:
        raise FedVaultError(
            f'column {rule.name!r}: distance = "ordered" on categories needs order = [...]'
        )
    levels = list(rule.order) if rule.order else sorted(text.unique())
    position = {value: index for index, value in enumerate(levels)}
    unknown = ~text.isin(position)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise FedVaultError(
            f"column {rule.name!r}: value {text.iloc[row]!r} at row {row + 1} is not in its order"
        )
    return SensitiveColumn(rule.name, text.map(position).to_numpy(np.int64), len(levels), ordered)


def _generalize(dim: Dimension, partitioning: Partitioning) -> tuple[np.ndarray, np.ndarray]:
    """Generalized cell and certainty penalty of each released group, in group order."""
    groups = partitioning.groups
    starts = np.cumsum([0] + [len(group) for group in groups[:-1]])
    codes = dim.codes[np.concatenate(groups)]
    lows = np.minimum.reduceat(codes, starts).tolist()
    highs = np.maximum.reduceat(codes, starts).tolist()
    cache: dict[tuple[int, int], tuple[str, float]] = {}
    for bounds in zip(lows, highs, strict=True):
        if bounds not in cache:
            cache[bounds] = (dim.label(*bounds), dim.ncp(*bounds))
    cells = np.array([cache[bounds][0] for bounds in zip(lows, highs, strict=True)], dtype=object)
    penalty = np.array([cache[bounds][1] for bounds in zip(lows, highs, strict=True)])
    return cells, penalty


def _quasi_transformation(dim: Dimension) -> str:
    recoding = "" if dim.recoding == "none" else f"{dim.recoding}; "
    if dim.fixed:
        return f"{recoding}kept exact (fixed); groups that miss the targets are suppressed"
    return f"{recoding}generalized to Mondrian ranges"


def _targets_report(targets: Targets) -> dict[str, Any]:
    return {
        "k": targets.k,
        "l": targets.l,
        "l_kind": targets.l_kind,
        "t": targets.t,
        "max_suppression": targets.max_suppression,
    }


def _verify(metrics: dict[str, Any], targets: Targets) -> None:
    """Refuse a release that misses a target (a bug guard: Mondrian guarantees them)."""
    problems = []
    if metrics["k"] < targets.k:
        problems.append(f"k={metrics['k']}")
    if targets.l is not None:
        achieved = metrics["l_distinct" if targets.l_kind == "distinct" else "l_entropy"]
        problems += [
            f"l={value:g} on {name}"
            for name, value in achieved.items()
            if value < targets.l * (1 - TOLERANCE)
        ]
    if targets.t is not None:
        problems += [
            f"t={value:.4f} on {name}"
            for name, value in metrics["t"].items()
            if value > targets.t + TOLERANCE
        ]
    if problems:
        raise RuntimeError(f"released table misses {targets.describe()}: {', '.join(problems)}")
