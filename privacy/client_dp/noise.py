"""Gaussian noise whose randomness comes from the operating system's CSPRNG.

DP noise is only as good as its randomness: anyone who can predict the noise can subtract it.
NumPy's default generator (PCG64, and what `np.random.normal` uses) is a fast statistical
PRNG: its whole future output follows from 128 bits of state, which can be recovered from
observed outputs. Flower's DP wrappers draw their noise that way.

`SecureGaussian` instead reads fresh bytes from `os.urandom` (getrandom(2) on Linux: a
ChaCha20-based CSPRNG reseeded by the kernel) on every call, turns them into 53-bit uniforms
and applies the Box-Muller transform, vectorised with NumPy: about 1e6 values in some tens of
milliseconds. No generator state lives in the process, so nothing can be cloned, forked or
leaked from it.

Limits, stated plainly: Box-Muller on 53-bit uniforms truncates the tails at about 8.6
standard deviations (probability ~1e-17 per value), and like every floating-point sampler it
does not defend against the floating-point attacks of Mironov (CCS 2012) or Jin et al. (S&P
2022); a discrete Gaussian over integers would be needed for that.

A seeded mode exists for tests and reproducible research only. It is INSECURE: the noise
follows from the seed. `SecureGaussian.secure` says which mode an instance is in, so a
caller that releases results can refuse the seeded one.
"""

from __future__ import annotations

import os

import numpy as np

from privacy.client_dp import checks
from privacy.errors import FedVaultError

_TWO_POW_MINUS_53 = 2.0**-53


class SecureGaussian:
    """Source of N(0, std^2) arrays drawn from OS randomness.

    `SecureGaussian()` is the production mode. `SecureGaussian(insecure_seed=s)` draws its
    bytes from NumPy's PCG64 seeded with `s`: reproducible, and therefore NOT private.
    """

    def __init__(self, insecure_seed: int | None = None) -> None:
        if insecure_seed is None:
            self._rng: np.random.Generator | None = None
        else:
            self._rng = np.random.default_rng(checks.count("insecure seed", insecure_seed, 0))

    @property
    def secure(self) -> bool:
        """True when the noise comes from the OS CSPRNG; False in the seeded test mode."""
        return self._rng is None

    def normal(self, shape: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        """A float64 array of the given shape with independent N(0, std^2) entries."""
        std = checks.noise_std(std)
        dims = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
        if any(int(d) < 0 for d in dims):
            raise FedVaultError(f"noise shape must have non-negative sizes, got {shape!r}")
        size = int(np.prod(dims, dtype=np.int64))
        return (self._standard_normal(size) * std).reshape(dims)

    def _standard_normal(self, size: int) -> np.ndarray:
        pairs = (size + 1) // 2
        words = np.frombuffer(self._random_bytes(16 * pairs), dtype=np.uint64)
        uniforms = (words >> np.uint64(11)).astype(np.float64) * _TWO_POW_MINUS_53
        radius = np.sqrt(-2.0 * np.log(1.0 - uniforms[:pairs]))  # 1 - u lies in (0, 1]
        angle = 2.0 * np.pi * uniforms[pairs:]
        return np.concatenate((radius * np.cos(angle), radius * np.sin(angle)))[:size]

    def _random_bytes(self, n: int) -> bytes:
        if self._rng is None:
            return os.urandom(n)
        return self._rng.bytes(n)
