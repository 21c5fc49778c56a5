"""Noise shares for distributed DP-SGD: each site adds part of the noise, the sum carries all.

Secure aggregation shows the server only the sum of the sites' vectors, so one DP-SGD step
needs the full noise std sigma*C only once, in the sum. Each site adds its share, sized for
the worst case it accepts: of the contributors a released sum is guaranteed to hold (the
secure-aggregation threshold t, which every site checks), up to `colluders` may be working
with the server and strip their own shares, so `honest = t - colluders` shares must carry
the whole variance. A site's share therefore has variance (sigma C)^2 / honest; a sum with
more honest contributors carries more noise, never less.

The arithmetic is exact. Secure aggregation adds integers modulo 2^64, so a site rounds its
clipped gradient sum at `scale` integer units per unit (stochastic rounding, unbiased) and
adds integer noise: a symmetric Skellam variate (Poisson minus Poisson, Agarwal, Kairouz,
Liu 2021), because a sum of independent Skellams is again Skellam, with the summed
variance. Rounding moves each coordinate by less than one unit more, which the accounting
adds to the sensitivity (privacy/accounting.py); the modular reduction is applied to the sum
and is post-processing. The scale follows from the mechanism (each share has std
SHARE_STD units), so neither side chooses it.

The Poisson variates come from the site's SecureRandom uniforms (the OS CSPRNG) through
Hormann's PTRS transformed rejection (1993), the algorithm NumPy uses for large means; at a
mean of 2^29 its float64 acceptance test is accurate to about 1e-6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privacy.accounting import SKELLAM, PrivacyEvent
from privacy.errors import FedVaultError
from privacy.randomness import SecureRandom

SHARE_STD = 2**15  # one share's noise std in integer units
MIN_POISSON_MEAN = 10.0  # PTRS holds from here up


def honest_shares(threshold: int, colluders: int) -> int:
    """Shares from sites not colluding that every released sum holds: t - colluders, >= 1."""
    if colluders < 0:
        raise FedVaultError(f"colluders must be >= 0, got {colluders}")
    if threshold - colluders < 1:
        raise FedVaultError(
            f"{colluders} tolerated colluders leave no honest share among the "
            f"{threshold} contributors a released sum is guaranteed to hold"
        )
    return threshold - colluders


@dataclass(frozen=True)
class NoiseShares:
    """The noise one site adds to one distributed step, from settings every site agrees on."""

    noise_multiplier: float
    clip_norm: float
    threshold: int
    colluders: int
    dimension: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise FedVaultError(
                f"distributed DP needs a noise multiplier > 0, got {self.noise_multiplier!r}"
            )
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise FedVaultError(f"clip norm must be > 0, got {self.clip_norm!r}")
        honest_shares(self.threshold, self.colluders)
        if self.dimension < 1:
            raise FedVaultError(f"dimension must be >= 1, got {self.dimension}")

    @property
    def honest(self) -> int:
        """Honest shares every released sum is guaranteed to hold."""
        return honest_shares(self.threshold, self.colluders)

    @property
    def scale(self) -> float:
        """Integer units per unit of gradient: sigma*C*scale is the guaranteed total std."""
        return SHARE_STD * math.sqrt(self.honest) / (self.noise_multiplier * self.clip_norm)

    @property
    def fallback_noise_multiplier(self) -> float:
        """The noise multiplier of this site's share alone (if secure aggregation broke)."""
        return self.noise_multiplier / math.sqrt(self.honest)

    def event(self, sample_rate: float) -> PrivacyEvent:
        """The step as the released sum sees it: total std sigma*C from honest shares."""
        return self._event(self.noise_multiplier, sample_rate)

    def fallback_event(self, sample_rate: float) -> PrivacyEvent:
        """The step as this site's own vector alone would reveal it."""
        return self._event(self.fallback_noise_multiplier, sample_rate)

    def _event(self, sigma: float, sample_rate: float) -> PrivacyEvent:
        return PrivacyEvent(
            mechanism=SKELLAM,
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            steps=1,
            clip_norm=self.clip_norm,
            dimension=self.dimension,
            scale=self.scale,
        )

    def noisy_share(self, clipped_sum: np.ndarray, rng: SecureRandom) -> np.ndarray:
        """The site's vector for secure aggregation: its rounded sum plus its noise share."""
        values = np.asarray(clipped_sum, dtype=np.float64)
        if values.shape != (self.dimension,):
            raise FedVaultError(
                f"gradient sum has shape {values.shape}, expected ({self.dimension},)"
            )
        if not np.all(np.isfinite(values)):
            raise FedVaultError("gradient sum holds NaN or infinite values")
        return stochastic_round(values * self.scale, rng) + skellam(
            self.dimension, float(SHARE_STD) ** 2, rng
        )

    def gradient_sum(self, total: np.ndarray) -> np.ndarray:
        """The released integer sum back in gradient units (noise included)."""
        return np.asarray(total, dtype=np.float64) / self.scale


def stochastic_round(values: np.ndarray, rng: SecureRandom) -> np.ndarray:
    """Round each value up with probability equal to its fractional part (unbiased)."""
    floor = np.floor(values)
    up = rng.uniform(values.size).reshape(values.shape) < values - floor
    return floor.astype(np.int64) + up


def skellam(size: int, variance: float, rng: SecureRandom) -> np.ndarray:
    """`size` symmetric Skellam variates of the given variance (int64)."""
    mean = variance / 2
    return poisson(size, mean, rng) - poisson(size, mean, rng)


def poisson(size: int, mean: float, rng: SecureRandom) -> np.ndarray:
    """`size` Poisson(mean) variates by PTRS transformed rejection (mean >= 10)."""
    if not (math.isfinite(mean) and mean >= MIN_POISSON_MEAN):
        raise FedVaultError(f"Poisson mean must be >= {MIN_POISSON_MEAN:g}, got {mean!r}")
    from scipy.special import gammaln

    slam, loglam = math.sqrt(mean), math.log(mean)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    log_inv_alpha = math.log(1.1239 + 1.1328 / (b - 3.4))
    vr = 0.9277 - 3.6224 / (b - 2)
    out = np.empty(size, dtype=np.int64)
    pending = np.arange(size)
    while pending.size:
        u = rng.uniform(pending.size) - 0.5
        v = rng.uniform(pending.size)
        us = 0.5 - np.abs(u)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.floor((2 * a / us + b) * u + mean + 0.43)
            quick = (us >= 0.07) & (v <= vr)
            usable = (us > 0) & (k >= 0) & ~((us < 0.013) & (v > us))
            slow = usable & (
                np.log(v) + log_inv_alpha - np.log(a / (us * us) + b)
                <= -mean + k * loglam - gammaln(k + 1)
            )
        accepted = quick | slow
        out[pending[accepted]] = k[accepted].astype(np.int64)
        pending = pending[~accepted]
    return out
