"""What an anonymized table achieves, measured on the released table itself.

Privacy: k (smallest equivalence class), l (distinct and entropy) and t (earth mover's
distance, Li et al. 2007, from each class to the whole cleaned table before suppression: the
distribution an attacker learns from the release, measured against the released rows alone,
would hide what suppression removed) per sensitive column, and the prosecutor re-identification risk
(an attacker who knows a person is in the table re-identifies them with probability
1/|class|). Utility: discernibility (each record costs the size of its class; a suppressed
record costs the whole table), the normalized average class size C_avg = (n / classes) / k,
and the normalized certainty penalty computed by the pipeline from the generalized ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SensitiveColumn:
    """A sensitive attribute as value codes, in the column's order for ordered distance.

    `reference` is the distribution of the whole table (the t-closeness reference); it stays
    that of the whole table when `codes` is narrowed to released records.
    """

    name: str
    codes: np.ndarray
    size: int
    ordered: bool
    reference: np.ndarray

    @classmethod
    def of(cls, name: str, codes: np.ndarray, size: int, ordered: bool) -> SensitiveColumn:
        """The column of the whole table, its reference measured from `codes`."""
        reference = np.bincount(codes, minlength=size) / max(len(codes), 1)
        return cls(name, codes, size, ordered, reference)


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (natural log) of distributions along the last axis."""
    p = np.asarray(p, dtype=float)
    safe = np.where(p > 0, p, 1.0)
    return -(p * np.log(safe)).sum(axis=-1)


def emd(p: np.ndarray, q: np.ndarray, ordered: bool) -> np.ndarray:
    """Earth mover's distance from distributions `p` (last axis) to the reference `q`.

    Equal ground distance for categories: half the L1 distance. Ordered distance for ordered
    values: sum of absolute cumulative differences over the m values present in `q`, / (m-1).
    """
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if not ordered:
        return 0.5 * np.abs(p - q).sum(axis=-1)
    present = q > 0
    values = int(present.sum())
    if values < 2:
        return np.zeros(p.shape[:-1])
    cumulative = np.cumsum(p[..., present] - q[present], axis=-1)
    return np.abs(cumulative).sum(axis=-1) / (values - 1)


def class_ids(table: pd.DataFrame, quasi: list[str]) -> np.ndarray:
    """Equivalence class number of each row: rows with equal quasi-identifiers share one."""
    if not quasi or table.empty:
        return np.zeros(len(table), dtype=np.int64)
    return table.groupby(quasi, sort=False, dropna=False).ngroup().to_numpy(np.int64)


def privacy_metrics(
    ids: np.ndarray,
    sensitive: list[SensitiveColumn],
    suppressed: int,
    input_rows: int,
    k_target: int,
) -> dict[str, Any]:
    """k, l, t, risk and class-based information loss of the released records."""
    compact = np.unique(ids, return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(compact)
    released = int(sizes.sum())
    classes = len(sizes)
    metrics: dict[str, Any] = {
        "k": int(sizes.min()),
        "equivalence_classes": classes,
        "l_distinct": {},
        "l_entropy": {},
        "t": {},
        "risk": {
            "prosecutor_max": 1 / float(sizes.min()),
            "prosecutor_average": classes / released,
            "records_at_max_risk": int(sizes[sizes == sizes.min()].sum()),
        },
        "information_loss": {
            "discernibility": int((sizes.astype(np.int64) ** 2).sum()) + suppressed * input_rows,
            "average_class_size": released / classes / k_target,
        },
    }
    for column in sensitive:
        counts = np.bincount(
            compact * column.size + column.codes, minlength=classes * column.size
        ).reshape(classes, column.size)
        shares = counts / sizes[:, None]
        metrics["l_distinct"][column.name] = int(np.count_nonzero(counts, axis=1).min())
        metrics["l_entropy"][column.name] = float(np.exp(entropy(shares)).min())
        metrics["t"][column.name] = float(emd(shares, column.reference, column.ordered).max())
    return metrics
