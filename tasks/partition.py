"""Split a dataset's training rows among sites: IID, Dirichlet label skew, or by a column.

Every partitioner is a pure function of its inputs and seed, so each simulated site can
compute its own share independently and all sites agree; the shares are disjoint and cover
every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privacy.errors import FedVaultError


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed `--partition` value: `iid`, `dirichlet:ALPHA` or `column:NAME`."""

    kind: str
    alpha: float = 0.0
    column: str = ""

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        kind, _, arg = text.partition(":")
        if kind == "iid" and not arg:
            return cls("iid")
        if kind == "dirichlet":
            try:
                alpha = float(arg)
            except ValueError:
                raise FedVaultError(
                    f"partition {text!r}: alpha must be a number, e.g. dirichlet:0.5"
                ) from None
            if not alpha > 0 or not np.isfinite(alpha):
                raise FedVaultError(f"partition {text!r}: alpha must be > 0")
            return cls("dirichlet", alpha=alpha)
        if kind == "column" and arg:
            return cls("column", column=arg)
        raise FedVaultError(f"unknown partition {text!r}: use iid, dirichlet:ALPHA or column:NAME")

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "column":
            return f"column:{self.column}"
        return "iid"


def partition_iid(num_rows: int, num_sites: int, seed: int) -> list[np.ndarray]:
    """Shuffle the rows and deal them out in near-equal shares."""
    _check_counts(num_rows, num_sites)
    order = np.random.default_rng(seed).permutation(num_rows)
    return [np.sort(part) for part in np.array_split(order, num_sites)]


def partition_dirichlet(
    labels: np.ndarray, num_sites: int, alpha: float, seed: int, min_rows: int = 2
) -> list[np.ndarray]:
    """Label skew: each class is split among sites in Dirichlet(alpha) proportions.

    Small alpha gives each site few classes. Draws are repeated (deterministically) until
    every site holds at least `min_rows` rows, so no site is left without data.
    """
    _check_counts(len(labels), num_sites)
    if alpha <= 0:
        raise FedVaultError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    min_rows = min(min_rows, len(labels) // num_sites)
    for _ in range(1000):
        shares: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for cls in classes:
            rows = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_sites))[:-1] * len(rows)).astype(int)
            for site, part in enumerate(np.split(rows, cuts)):
                shares[site].append(part)
        parts = [np.sort(np.concatenate(s)) for s in shares]
        if min(len(p) for p in parts) >= min_rows:
            return parts
    raise FedVaultError(
        f"dirichlet:{alpha:g} could not give each of {num_sites} sites {min_rows} rows; "
        "raise alpha or use fewer sites"
    )


def partition_by_column(values: np.ndarray, num_sites: int) -> list[np.ndarray]:
    """Natural partition: one site per distinct value of a column (e.g. hospital)."""
    distinct = sorted(set(values.tolist()), key=str)
    if len(distinct) != num_sites:
        listed = ", ".join(map(str, distinct))
        raise FedVaultError(
            f"column partition has {len(distinct)} distinct values ({listed}) but the run "
            f"has {num_sites} sites; set the number of sites to {len(distinct)}"
        )
    return [np.flatnonzero(values == value) for value in distinct]


def _check_counts(num_rows: int, num_sites: int) -> None:
    if num_sites < 1:
        raise FedVaultError(f"number of sites must be positive, got {num_sites}")
    if num_sites > num_rows:
        raise FedVaultError(f"{num_sites} sites but only {num_rows} training records")
