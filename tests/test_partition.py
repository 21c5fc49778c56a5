import numpy as np
import pytest

from privacy.errors import FedVaultError
from tasks.partition import (
    PartitionSpec,
    partition_by_column,
    partition_dirichlet,
    partition_iid,
)


def assert_disjoint_covering(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert len(np.unique(joined)) == n


def test_iid_is_deterministic_disjoint_covering_and_balanced():
    parts = partition_iid(1003, 10, seed=7)
    assert_disjoint_covering(parts, 1003)
    assert {len(p) for p in parts} <= {100, 101}
    again = partition_iid(1003, 10, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_iid(1003, 10, seed=8)
    assert not np.array_equal(parts[0], other[0])


@pytest.mark.parametrize("alpha", [0.1, 0.5, 100.0])
def test_dirichlet_is_deterministic_disjoint_covering(alpha):
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    parts = partition_dirichlet(labels, 10, alpha, seed=3)
    assert_disjoint_covering(parts, 5000)
    again = partition_dirichlet(labels, 10, alpha, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_small_alpha_gives_label_skew_large_alpha_does_not():
    labels = np.random.default_rng(0).integers(0, 10, 10000)

    def mean_dominant_share(alpha: float) -> float:
        parts = partition_dirichlet(labels, 10, alpha, seed=1)
        return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))

    assert mean_dominant_share(0.1) > 0.5
    assert mean_dominant_share(100.0) < 0.2


def test_column_partition_one_site_per_value():
    values = np.array(["a", "b", "a", "c", "b", "a"])
    parts = partition_by_column(values, 3)
    assert_disjoint_covering(parts, 6)
    assert [values[p][0] for p in parts] == ["a", "b", "c"]
    assert all(len(set(values[p])) == 1 for p in parts)
    with pytest.raises(FedVaultError, match="3 distinct values"):
        partition_by_column(values, 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dirichlet:0", "alpha must be > 0"),
        ("dirichlet:-1", "alpha must be > 0"),
        ("dirichlet:abc", "must be a number"),
        ("shards", "unknown partition"),
        ("column:", "unknown partition"),
    ],
)
def test_bad_partition_specs(text, message):
    with pytest.raises(FedVaultError, match=message):
        PartitionSpec.parse(text)


def test_more_sites_than_records_and_non_positive_counts():
    with pytest.raises(FedVaultError, match="only 5 training records"):
        partition_iid(5, 6, seed=0)
    with pytest.raises(FedVaultError, match="must be positive"):
        partition_iid(5, 0, seed=0)


def test_spec_round_trip():
    for text in ("iid", "dirichlet:0.3", "column:hospital"):
        assert str(PartitionSpec.parse(text)) == text
