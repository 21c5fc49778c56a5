"""Noise on the aggregate of clipped updates (DP-FedAvg, McMahan et al. 2018).

Convention, used everywhere in FedVault: the Gaussian noise is added to the SUM of the
clipped updates with standard deviation `sigma * C`, and the noisy sum is then divided by a
FIXED denominator (the expected number of clients: `q * N` under Poisson sampling, `m`
under fixed-size sampling, `N` when every client takes part). The mean therefore carries
noise of standard deviation `sigma * C / denominator`.

Why these choices:
- On the sum, one client moves the result by at most C (add/remove) or 2C (replace), so
  `sigma` is exactly dp-accounting's noise multiplier (std / C).
- The denominator must not be the number of clients who actually replied: that count is not
  noised, and dividing by it would make the released mean depend on it. Client weights by
  example count are excluded for the same reason: every client contributes with weight 1.

Two places the noise can be added:
- central: the server adds N(0, (sigma C)^2) to the sum (`central_noise_std`). The server
  is trusted to add it and to keep the un-noised sum (or, without secure aggregation, the
  single updates) to itself.
- distributed: each client adds its own share N(0, (sigma C)^2 / n_min) before masking
  (`distributed_share_std`), secure aggregation reveals only the masked sum, and no single
  party ever holds an un-noised value. If at least `n_min` honest clients survive, the sum
  carries variance >= (sigma C)^2; more survivors add more noise (more privacy, less
  accuracy). Clients colluding with the server can remove their own shares, so `n_min` must
  count only clients trusted not to collude.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from privacy.client_dp import checks
from privacy.client_dp.clipping import update_norm
from privacy.errors import FedVaultError
from privacy.randomness import SecureRandom

# Relative slack for float rounding when checking that an update is clipped.
_NORM_TOLERANCE = 1e-6


def central_noise_std(noise_multiplier: float, clip_norm: float) -> float:
    """Standard deviation of the noise the server adds to the sum: `sigma * C`."""
    return checks.noise_multiplier(noise_multiplier) * checks.clip_norm(clip_norm)


def distributed_share_std(total_std: float, min_clients: int) -> float:
    """Standard deviation of one client's share: `total_std / sqrt(min_clients)`.

    Any `min_clients` independent shares sum to variance `total_std^2`. Use it with
    `central_noise_std(...)` for the update and with the count noise of adaptive clipping.
    """
    return checks.noise_std(total_std) / math.sqrt(checks.count("minimum clients", min_clients))


def sum_updates(updates: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise float64 sum of clipped updates that all have the same array shapes."""
    if not updates:
        raise FedVaultError("cannot sum an empty list of updates")
    shapes = [np.shape(a) for a in updates[0]]
    total = [np.zeros(shape, dtype=np.float64) for shape in shapes]
    for index, update in enumerate(updates):
        if [np.shape(a) for a in update] != shapes:
            raise FedVaultError(f"update {index} has array shapes that differ from update 0")
        for acc, array in zip(total, update, strict=True):
            acc += array
    return total


def add_noise(arrays: Sequence[np.ndarray], std: float, gaussian: SecureRandom) -> list[np.ndarray]:
    """New arrays: each of `arrays` plus independent N(0, std^2) noise, in float64."""
    std = checks.noise_std(std)
    return [np.asarray(a, dtype=np.float64) + gaussian.normal(np.shape(a), std) for a in arrays]


def mean_from_sum(noisy_sum: Sequence[np.ndarray], denominator: float) -> list[np.ndarray]:
    """Divide a noisy sum by the fixed denominator (expected number of clients)."""
    denominator = checks.positive("aggregation denominator", denominator)
    return [np.asarray(a, dtype=np.float64) / denominator for a in noisy_sum]


def private_mean(
    clipped_updates: Sequence[Sequence[np.ndarray]],
    *,
    clip_norm: float,
    noise_multiplier: float,
    denominator: float,
    gaussian: SecureRandom,
) -> list[np.ndarray]:
    """Central DP-FedAvg step: sum the clipped updates, add N(0, (sigma C)^2), divide.

    The updates must already be clipped to `clip_norm` (see `clip_update`); one that is
    longer (beyond float rounding) is refused, since it would void the privacy guarantee.
    """
    limit = checks.clip_norm(clip_norm) * (1.0 + _NORM_TOLERANCE)
    for index, update in enumerate(clipped_updates):
        norm = update_norm(update)
        if not norm <= limit:
            raise FedVaultError(
                f"update {index} has L2 norm {norm:.6g} above the clip norm {clip_norm:.6g}"
            )
    noisy = add_noise(
        sum_updates(clipped_updates), central_noise_std(noise_multiplier, clip_norm), gaussian
    )
    return mean_from_sum(noisy, denominator)
