"""Offline datasets: MNIST-1D (generated and cached), scikit-learn digits, and CSV tables.

Nothing here downloads. MNIST-1D is generated from its seed as the `mnist1d` package does it (a
few seconds) and cached as .npz keyed by its parameters, so every simulated site loads the same
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
        data = make_mnist1d(num_train + num_test, num_train / (num_train + num_test), seed)
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


def make_mnist1d(num_samples: int, train_split: float, seed: int) -> dict[str, np.ndarray]:
    """`mnist1d.data.make_dataset` with the package's default arguments, array for array.

    The package builds two scipy interpolators per sample, which made the default scenario's
    105,000 samples take about a minute; np.interp is what those interpolators call, and the
    noise is smoothed for all samples at once. The random draws are the package's, in its
    order, from a generator of its own seed (not numpy's global one), so the arrays are
    identical to the package's (tests/test_datasets_models.py compares them).
    """
    from mnist1d.data import get_dataset_args, get_templates
    from scipy.ndimage import gaussian_filter1d

    args = get_dataset_args()
    templates = get_templates()
    rng = np.random.RandomState(seed)
    low, high = args.padding
    dilated = np.linspace(0, 1, args.template_len + high)
    labels = templates["y"]
    ys = np.repeat(labels, num_samples // len(labels))
    xs = np.empty((len(ys), len(dilated)))
    corr_noise, iid_noise, shear = np.empty_like(xs), np.empty_like(xs), np.empty(len(ys))
    for i, label in enumerate(ys):  # each sample's draws, in the package's order
        x = np.concatenate(
            [templates["x"][label] + 1e-8, np.zeros(low + int(rng.rand() * (high - low + 1)))]
        )
        x = np.interp(dilated, np.linspace(0, 1, len(x)), x)
        x *= 1 + args.scale_coeff * (rng.rand() - 0.5)
        k = rng.choice(args.max_translation)
        xs[i] = np.concatenate([x[-k:], x[:-k]])
        corr_noise[i] = args.corr_noise_scale * rng.randn(len(dilated))
        iid_noise[i] = args.iid_noise_scale * rng.randn(len(dilated))
        shear[i] = args.shear_scale * (rng.rand() - 0.5)
    signal = xs != 0
    xs = signal * xs + (1 - signal) * gaussian_filter1d(corr_noise, 2, axis=1)
    xs = xs + iid_noise
    xs = xs - shear[:, None] * np.linspace(-0.5, 0.5, len(dilated))
    final = np.linspace(0, 1, args.final_seq_length)
    xs = np.stack([np.interp(final, dilated, x) for x in xs])
    order = rng.permutation(len(ys))
    xs, ys = xs[order], ys[order]
    xs = (xs - xs.mean()) / xs.std()
    split = int(len(ys) * train_split)
    return {"x": xs[:split], "x_test": xs[split:], "y": ys[:split], "y_test": ys[split:]}


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
