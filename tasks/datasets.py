"""Offline datasets: MNIST-1D (generated and cached), scikit-learn digits, and CSV tables.

Nothing here downloads. MNIST-1D is generated from its seed by the `mnist1d` package (a few
seconds) and cached as .npz keyed by its parameters, so every simulated site loads the same
arrays quickly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from privacy.atomic import atomic_path
from privacy.errors import FedVaultError


@dataclass
class Dataset:
    """Train and held-out test arrays, plus columns a natural partition may split on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    groups: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))


def cache_dir() -> Path:
    """Where generated datasets are cached: $FEDVAULT_CACHE or ~/.cache/fedvault."""
    return Path(os.environ.get("FEDVAULT_CACHE", Path.home() / ".cache" / "fedvault"))


def load_mnist1d(num_train: int, num_test: int, seed: int) -> Dataset:
    """MNIST-1D with the given split sizes, generated once per (sizes, seed) and cached."""
    if num_train < 1 or num_test < 1:
        raise FedVaultError("mnist1d sizes must be positive (num-train, num-test)")
    path = cache_dir() / f"mnist1d-{num_train}-{num_test}-{seed}.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = num_train + num_test
        args.train_split = num_train / (num_train + num_test)
        args.seed = seed
        data = make_dataset(args)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                x_train=data["x"][:num_train],
                y_train=data["y"][:num_train],
                x_test=data["x_test"][:num_test],
                y_test=data["y_test"][:num_test],
            )
    with np.load(path) as arrays:
        return Dataset(
            x_train=arrays["x_train"].astype(np.float32),
            y_train=arrays["y_train"].astype(np.int64),
            x_test=arrays["x_test"].astype(np.float32),
            y_test=arrays["y_test"].astype(np.int64),
            num_classes=10,
        )


def load_digits(seed: int, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], split by seed."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    train, test = split_indices(len(y), test_fraction, seed)
    return Dataset(x[train], y[train], x[test], y[test], num_classes=10)


def split_indices(num_rows: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic train/test split of row indices."""
    order = np.random.default_rng(seed).permutation(num_rows)
    num_test = max(1, round(num_rows * test_fraction))
    return np.sort(order[num_test:]), np.sort(order[:num_test])
