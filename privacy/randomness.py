"""Randomness that a privacy guarantee rests on, drawn from the operating system's CSPRNG.

DP noise and DP sampling are only as good as their randomness: whoever can predict the noise
can subtract it, and whoever knows which records a step sampled knows more than the
accountant assumes. NumPy's and torch's generators (PCG64, MT19937, Philox) are fast
statistical PRNGs whose whole output follows from a small state, and a seed taken from run
settings hands that state to the coordinator. `SecureRandom` instead reads fresh bytes from
`os.urandom` (getrandom(2) on Linux: a ChaCha20-based CSPRNG reseeded by the kernel) on
every call, so no generator state lives in the process to be cloned, forked or leaked, and
turns them into 53-bit uniforms, Bernoulli masks (Poisson sampling) and Gaussians
(Box-Muller, vectorised with NumPy).

`masked_normal` is what DP-SGD adds to a gradient: the sum of four independent Gaussians of
the requested std, halved, as Opacus' `secure_mode` does (Holohan and Braghin 2021, section
5.1 with n = 2). A single floating-point Gaussian leaks its low-order bits (Mironov, CCS
2012; Jin et al., S&P 2022); the sum makes the attack cost about 2**159 guesses.

Box-Muller on 53-bit uniforms truncates the tails at about 8.6 standard deviations
(probability ~1e-17 per value); a discrete Gaussian over integers would be needed to close
the floating-point question entirely.

A seeded mode exists for tests and reproducible research only. It is INSECURE: every value
follows from the seed. `SecureRandom.secure` says which mode an instance is in, so whoever
records or reports a release can say that its guarantee does not hold.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from privacy.errors import FedVaultError

_TWO_POW_MINUS_53 = 2.0**-53


def _noise_std(value: float) -> float:
    try:
        std = float(value)
    except (TypeError, ValueError):
        raise FedVaultError(f"noise standard deviation must be a number, got {value!r}") from None
    if not math.isfinite(std) or std < 0:
        raise FedVaultError(f"noise standard deviation must be finite and >= 0, got {value!r}")
    return std


class SecureRandom:
    """Uniforms, Bernoulli masks and Gaussians from OS randomness (or, for tests, a seed).

    `SecureRandom()` is the production mode. `SecureRandom(insecure_seed=s)` draws its bytes
    from NumPy's PCG64 seeded with `s`: reproducible, and therefore NOT private.
    """

    def __init__(self, insecure_seed: int | None = None) -> None:
        if insecure_seed is None:
            self._rng: np.random.Generator | None = None
        else:
            if (
                isinstance(insecure_seed, bool)
                or not isinstance(insecure_seed, numbers.Integral)
                or insecure_seed < 0
            ):
                raise FedVaultError(
                    f"insecure seed must be a whole number >= 0, got {insecure_seed!r}"
                )
            self._rng = np.random.default_rng(int(insecure_seed))

    @property
    def secure(self) -> bool:
        """True when values come from the OS CSPRNG; False in the seeded test mode."""
        return self._rng is None

    @property
    def source(self) -> str:
        """How the values are drawn, in words a report can quote."""
        if self.secure:
            return "os.urandom (the operating system's CSPRNG), fresh bytes for every draw"
        return "seeded PCG64 (reproducible research mode: the noise follows from the seed)"

    def uniform(self, size: int) -> np.ndarray:
        """`size` independent uniforms on [0, 1) with 53 random bits each (float64)."""
        words = np.frombuffer(self._random_bytes(8 * _size(size)), dtype=np.uint64)
        return (words >> np.uint64(11)).astype(np.float64) * _TWO_POW_MINUS_53

    def bernoulli(self, size: int, probability: float) -> np.ndarray:
        """A boolean mask of `size` independent draws, each True with `probability`."""
        if not 0.0 <= probability <= 1.0:
            raise FedVaultError(f"probability must be in [0, 1], got {probability!r}")
        return self.uniform(size) < probability

    def normal(self, shape: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        """A float64 array of the given shape with independent N(0, std^2) entries."""
        std = _noise_std(std)
        dims = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
        if any(int(d) < 0 for d in dims):
            raise FedVaultError(f"noise shape must have non-negative sizes, got {shape!r}")
        size = int(np.prod(dims, dtype=np.int64))
        return (self._standard_normal(size) * std).reshape(dims)

    def masked_normal(self, shape: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        """N(0, std^2) as (g1 + g2 + g3 + g4) / 2: Gaussian, with its low bits masked."""
        std = _noise_std(std)
        dims = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
        return self.normal((4, *dims), std).sum(axis=0) / 2.0

    def _standard_normal(self, size: int) -> np.ndarray:
        pairs = (size + 1) // 2
        uniforms = self.uniform(2 * pairs)
        radius = np.sqrt(-2.0 * np.log(1.0 - uniforms[:pairs]))  # 1 - u lies in (0, 1]
        angle = 2.0 * np.pi * uniforms[pairs:]
        return np.concatenate((radius * np.cos(angle), radius * np.sin(angle)))[:size]

    def _random_bytes(self, n: int) -> bytes:
        if self._rng is None:
            return os.urandom(n)
        return self._rng.bytes(n)


def _size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise FedVaultError(f"size must be a whole number >= 0, got {size!r}")
    return int(size)
