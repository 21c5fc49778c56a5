"""Adaptive clipping at a target quantile of update norms (Andrew et al., NeurIPS 2021).

A fixed clip norm C is hard to choose: too small biases every update, too large drowns the
mean in noise (the noise scales with C). Andrew et al. track a quantile of the clients'
update norms privately instead:

1. Each sampled client reports the bit b_i = [||delta_i|| <= C] for the current C.
2. The server releases the noisy centred count S = sum_i (b_i - 1/2) + N(0, sigma_b^2)
   and the estimate b_hat = clip(S / m + 1/2, 0, 1), where m is the expected number of
   clients (a fixed denominator, as for the update mean).
3. Geometric update: C <- C * exp(-eta * (b_hat - gamma)) with target quantile gamma.

Privacy: centring the bits makes the count's sensitivity 1/2 (add/remove one client), so
the count is a Gaussian mechanism with noise multiplier 2 sigma_b. Releasing it together
with the update sum noised with multiplier sigma_delta is, as one Gaussian mechanism on the
joint vector, equal to a single Gaussian with sigma^-2 = sigma_delta^-2 + (2 sigma_b)^-2
(the paper's Theorem 1). To spend a budget `sigma`, the update noise is therefore raised to
sigma_delta = (sigma^-2 - (2 sigma_b)^-2)^(-1/2), which needs 2 sigma_b > sigma. The
accountant is given `sigma`, so the quantile estimate is fully paid for; the part of the
budget it takes is `quantile_budget_share = sigma^2 / (2 sigma_b)^2` (with Flower's default
sigma_b = m / 20 that is 100 sigma^2 / m^2: 1% for m = 100 clients and sigma = 1).

Flower's own wrapper noises the uncentred count sum_i b_i, whose add/remove sensitivity is 1,
with the same formula, which then holds only under replace-one adjacency; centring makes it
hold under both (replace-one halves both multipliers alike).
"""

from __future__ import annotations

import math

from privacy.client_dp import checks
from privacy.errors import FedVaultError
from privacy.randomness import SecureRandom


def update_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """sigma_delta = (sigma^-2 - (2 sigma_b)^-2)^(-1/2): the update noise that, together
    with count noise `count_noise_std` (sigma_b), spends exactly `noise_multiplier` (sigma)."""
    sigma = checks.positive("noise multiplier (adaptive clipping)", noise_multiplier)
    sigma_b = checks.positive("clipped-count noise std", count_noise_std)
    if 2.0 * sigma_b <= sigma:
        raise FedVaultError(
            f"clipped-count noise std ({sigma_b:g}) must exceed half the noise multiplier "
            f"({sigma:g} / 2): otherwise the quantile estimate alone spends the whole budget"
        )
    return (sigma**-2 - (2.0 * sigma_b) ** -2) ** -0.5


def quantile_budget_share(noise_multiplier: float, count_noise_std: float) -> float:
    """Fraction of the per-round budget (in sigma^-2, i.e. zCDP rho) spent on the quantile."""
    update_noise_multiplier(noise_multiplier, count_noise_std)
    return (noise_multiplier / (2.0 * count_noise_std)) ** 2


class AdaptiveClipper:
    """Server-side state of adaptive clipping: the current clip norm and its update rule.

    `noise_multiplier` is the total per-round sigma given to the accountant;
    `update_noise_multiplier` is the larger sigma_delta to use for the update sum.
    `gaussian` adds the count noise in `update(..., add_noise=True)`; with distributed
    noise the clients add shares of sigma_b instead and the server passes `add_noise=False`.
    """

    def __init__(
        self,
        initial_clip_norm: float,
        *,
        noise_multiplier: float,
        count_noise_std: float,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        gaussian: SecureRandom | None = None,
    ) -> None:
        self.clip_norm = checks.clip_norm(initial_clip_norm)
        self.noise_multiplier = checks.positive(
            "noise multiplier (adaptive clipping)", noise_multiplier
        )
        self.count_noise_std = checks.positive("clipped-count noise std", count_noise_std)
        self.update_noise_multiplier = update_noise_multiplier(noise_multiplier, count_noise_std)
        self.quantile_budget_share = quantile_budget_share(noise_multiplier, count_noise_std)
        self.target_quantile = checks.quantile(target_quantile)
        self.learning_rate = checks.positive("clip learning rate", learning_rate)
        self.gaussian = gaussian if gaussian is not None else SecureRandom()
        self.last_estimate: float | None = None

    def update(
        self,
        unclipped_count: float,
        num_clients: int,
        expected_clients: float,
        *,
        add_noise: bool = True,
    ) -> float:
        """Move the clip norm from this round's count; return the new clip norm.

        `unclipped_count` is sum_i b_i over the `num_clients` clients whose updates were
        aggregated (b_i = 1 when the update norm was <= the current clip norm, i.e. not
        clipped), already noised when `add_noise` is False. `expected_clients` is the fixed
        denominator m. The noisy fraction is stored in `last_estimate`.
        """
        num_clients = checks.count("number of reporting clients", num_clients, 0)
        count = float(unclipped_count)
        if not math.isfinite(count):
            raise FedVaultError(f"clipped count must be finite, got {unclipped_count!r}")
        if add_noise and not 0 <= count <= num_clients:
            raise FedVaultError(
                f"clipped count must lie in [0, {num_clients}] (clients reporting), got {count!r}"
            )
        expected = checks.positive("expected number of clients", expected_clients)
        centred = count - num_clients / 2.0
        if add_noise:
            centred += float(self.gaussian.normal(1, self.count_noise_std)[0])
        estimate = min(1.0, max(0.0, centred / expected + 0.5))
        self.last_estimate = estimate
        self.clip_norm *= math.exp(-self.learning_rate * (estimate - self.target_quantile))
        return self.clip_norm
