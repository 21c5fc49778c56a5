"""Parameter checks shared by the client-level DP modules.

Every bad setting becomes one `FedVaultError` line naming the parameter and the value, so a
typo in a scenario file stops the run before any update is released.
"""

from __future__ import annotations

import math
import numbers

from privacy.errors import FedVaultError


def _finite(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FedVaultError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise FedVaultError(f"{name} must be finite, got {value!r}")
    return number


def clip_norm(value: float) -> float:
    """A clip norm C: finite and > 0."""
    number = _finite("clip norm", value)
    if number <= 0:
        raise FedVaultError(f"clip norm must be > 0, got {value!r}")
    return number


def noise_multiplier(value: float) -> float:
    """A noise multiplier sigma: finite and >= 0 (0 means no noise, i.e. not private)."""
    number = _finite("noise multiplier", value)
    if number < 0:
        raise FedVaultError(f"noise multiplier must be >= 0, got {value!r}")
    return number


def noise_std(value: float) -> float:
    """A standard deviation: finite and >= 0."""
    number = _finite("noise standard deviation", value)
    if number < 0:
        raise FedVaultError(f"noise standard deviation must be >= 0, got {value!r}")
    return number


def sampling_rate(value: float) -> float:
    """A Poisson sampling rate q in (0, 1]."""
    number = _finite("client sampling rate", value)
    if not 0 < number <= 1:
        raise FedVaultError(f"client sampling rate must be in (0, 1], got {value!r}")
    return number


def quantile(value: float) -> float:
    """A target quantile in (0, 1)."""
    number = _finite("target quantile", value)
    if not 0 < number < 1:
        raise FedVaultError(f"target quantile must be in (0, 1), got {value!r}")
    return number


def positive(name: str, value: float) -> float:
    """Any finite parameter that must be > 0 (learning rate, denominator, epsilon)."""
    number = _finite(name, value)
    if number <= 0:
        raise FedVaultError(f"{name} must be > 0, got {value!r}")
    return number


def delta(value: float) -> float:
    """A DP delta in (0, 1)."""
    number = _finite("delta", value)
    if not 0 < number < 1:
        raise FedVaultError(f"delta must be in (0, 1), got {value!r}")
    return number


def count(name: str, value: int, minimum: int = 1) -> int:
    """An integer count >= `minimum` (bools and floats with a fraction are refused)."""
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, float) and value.is_integer()
    )
    if isinstance(value, bool) or not integral:
        raise FedVaultError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise FedVaultError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)
