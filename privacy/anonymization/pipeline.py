"""Apply a policy to a table: cleanse it, then drop or pseudonymize identifiers, generalize.

This is the one entry point the client and the CLI call. It checks the table against the
policy before touching anything (every column has a role, the policy's columns exist), cleanses
it as the policy declares (`cleaning.clean_table`), checks what anonymization needs (value
types, k not larger than the table, a key when pseudonymizing), runs Mondrian, then measures
the released table and refuses to return it unless it meets every target: a target is never
weakened to make a table pass.

The released rows are in a random order drawn from the OS CSPRNG: in source order, row i of
the release lines up with row i of a file sorted by admission time or record number, and
anyone who knows that order re-identifies by position.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from privacy.anonymization.cleaning import clean_table
from privacy.anonymization.generalize import Dimension, build_dimension
from privacy.anonymization.metrics import SensitiveColumn, class_ids, privacy_metrics
from privacy.anonymization.mondrian import TOLERANCE, Partitioning, partition
from privacy.anonymization.policy import ColumnRule, Policy, Targets
from privacy.anonymization.pseudonymize import PSEUDONYM_HEX, pseudonymize_series
from privacy.anonymization.values import (
    check_value_type,
    data_row,
    parse_numbers,
    require_filled,
    text_values,
)
from privacy.errors import FedVaultError
from privacy.randomness import SecureRandom

METHOD = "Mondrian multidimensional partitioning (LeFevre et al. 2006), median cuts"
ROW_ORDER = "shuffled: a uniformly random order from the OS CSPRNG, not the source order"


@dataclass(frozen=True)
class AnonymizationResult:
    """The released table and a JSON-safe report of what was done and achieved."""

    table: pd.DataFrame
    report: dict[str, Any]


def anonymize_table(
    table: pd.DataFrame, policy: Policy, key: bytes | None = None
) -> AnonymizationResult:
    """Cleanse and anonymize `table` under `policy`; `key` is needed when it pseudonymizes.

    Rows in error messages are the rows of `table` (1-based, header excluded).
    """
    cleaned = clean_table(table, policy)
    table = cleaned.table
    _check_table(table, policy, key, cleaned.report)
    rows = len(table)
    rules = policy.columns
    dimensions = [build_dimension(rules[name], table[name]) for name in policy.names("quasi")]
    sensitive = [_sensitive_column(rules[name], table[name]) for name in policy.names("sensitive")]
    columns = _check_other_columns(table, policy)
    partitioning = partition(dimensions, sensitive, policy.targets, rows)

    released = np.concatenate(partitioning.groups)
    group_of = np.repeat(np.arange(len(partitioning.groups)), [len(g) for g in partitioning.groups])
    order = _secure_permutation(len(released))
    released, group_of = released[order], group_of[order]
    output = table.iloc[released].reset_index(drop=True)
    ncp_by_column = _generalize_quasi(output, table, dimensions, partitioning, group_of, columns)
    output = _release_identifiers(output, policy, key, columns)
    for column in sensitive:
        columns[column.name] = {
            "role": "sensitive",
            "transformation": "kept; protected by the l and t targets",
            "distance": "ordered" if column.ordered else "equal",
        }

    released_sensitive = [replace(c, codes=c.codes[released]) for c in sensitive]
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
    linkable = [name for name, column in columns.items() if column.get("linkable")]
    report = {
        "policy": policy.source,
        "method": METHOD,
        "release": "pseudonymized" if linkable else "anonymized",
        "release_note": _release_note(linkable),
        "row_order": ROW_ORDER,
        "targets": _targets_report(policy.targets),
        "cleaning": cleaned.report,
        "rows_in": cleaned.report["rows_in"],
        "rows_after_cleaning": rows,
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


def _secure_permutation(size: int) -> np.ndarray:
    """A uniformly random permutation: positions sorted by 53-bit uniforms from os.urandom.

    Two equal uniforms (probability below size**2 / 2**54, about 1e-7 for 100,000 rows) keep
    their source order; nothing else of the source order survives.
    """
    return np.argsort(SecureRandom().uniform(size), kind="stable")


def _release_note(linkable: list[str]) -> str:
    if linkable:
        return (
            f"pseudonymized, not anonymized: {', '.join(linkable)} "
            f"{'keeps' if len(linkable) == 1 else 'keep'} one keyed pseudonym per person, which "
            "links that person's records across every export of this site"
        )
    return "anonymized: no column keeps a per-person key"


def _generalize_quasi(
    output: pd.DataFrame,
    table: pd.DataFrame,
    dimensions: list[Dimension],
    partitioning: Partitioning,
    group_of: np.ndarray,
    columns: dict[str, dict[str, Any]],
) -> dict[str, float]:
    """Write each released record's generalized cells; return the NCP of each column.

    `group_of` is the partition group of each released row, in release order.
    """
    rows = len(table)
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
            columns[name] = {"role": "identifier", "transformation": "dropped", "linkable": False}
        else:
            output[name] = pseudonymize_series(output[name], key or b"")
            columns[name] = {
                "role": "identifier",
                "transformation": "pseudonymized: HMAC-SHA256 under the site key of the "
                f"normalised value, first {PSEUDONYM_HEX} hex digits",
                "linkable": True,
            }
    return output


def _check_table(
    table: pd.DataFrame, policy: Policy, key: bytes | None, cleaning: dict[str, Any]
) -> None:
    dropped = cleaning["rows_dropped"]
    if policy.targets.k > len(table):
        after = f", after cleaning dropped {dropped}" if dropped else ""
        raise FedVaultError(
            f"k={policy.targets.k} is larger than the number of rows ({len(table)}{after})"
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
    for name in policy.names("keep"):
        numeric = check_value_type(table[name], name, policy.columns[name].type)
        report[name] = {
            "role": "keep",
            "type": "numeric" if numeric else "category",
            "transformation": "kept",
        }
    return report


def _sensitive_column(rule: ColumnRule, series: pd.Series) -> SensitiveColumn:
    require_filled(series, rule.name)
    numeric = check_value_type(series, rule.name, rule.type)
    ordered = rule.distance == "ordered" if rule.distance else numeric
    if numeric:
        values = parse_numbers(series, rule.name)
        levels, codes = np.unique(values, return_inverse=True)
        return SensitiveColumn.of(rule.name, codes.astype(np.int64), len(levels), ordered)
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
            f"column {rule.name!r}: value {text.iloc[row]!r} at row {data_row(series, row)} "
            "is not in its order"
        )
    codes = text.map(position).to_numpy(np.int64)
    return SensitiveColumn.of(rule.name, codes, len(levels), ordered)


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
