"""Client-level DP (DP-FedAvg) at the server: sampling, clipping, noise on the sum, accounting.

Every site's model delta is clipped to L2 norm C: by the server when it sees updates in the
clear, by the site itself before masking under secure aggregation (the server then only ever
holds the sum). The server adds Gaussian noise of std sigma*C to the SUM, from a CSPRNG
(`central`), or the sites add shares of it before masking (`distributed`: no single party
holds the noise; each site sizes its own share for the honest shares any released sum holds,
client/local_round.py, so the server neither chooses nor learns it). The sum is divided by
the EXPECTED number of sites, never by who replied, so a dropout reveals nothing. Each round
is a `ClientDpEvent` in the run ledger; epsilon is derived from those events with
dp-accounting, and the run stops before a round whose release would pass the run's maximum
client-level epsilon.

With adaptive clipping (Andrew et al. 2021) each site also reports whether its delta fitted
in C; the noisy count steers C toward the target quantile, and the update noise is raised so
that update and count together cost what one Gaussian release with sigma costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privacy.client_dp import (
    AdaptiveClipper,
    ClientDpEvent,
    central_noise_std,
    client_level_epsilon,
    clip_update,
    sample_clients,
    would_exceed,
)
from privacy.randomness import SecureRandom
from tasks.settings import RunSettings


@dataclass(frozen=True)
class RoundPlan:
    """Who trains this round, with which clip norm, and what the release will cost."""

    node_ids: list[int]
    clip_norm: float
    expected_sites: float
    event: ClientDpEvent


class ClientLevelDp:
    """The run's client-level DP state: clip norm, events so far, noise source."""

    def __init__(self, settings: RunSettings, gaussian: SecureRandom | None = None) -> None:
        self.settings = settings
        self.gaussian = gaussian or SecureRandom()
        self.events: list[ClientDpEvent] = []
        self.clipper = (
            AdaptiveClipper(
                settings.client_dp_clip,
                noise_multiplier=settings.client_dp_noise,
                count_noise_std=settings.client_dp_count_noise,
                target_quantile=settings.client_dp_quantile,
                learning_rate=settings.client_dp_clip_learning_rate,
                gaussian=self.gaussian,
            )
            if settings.client_dp_adaptive
            else None
        )

    def restore(self, rows: list[dict]) -> None:
        """Continue from the run ledger's client_dp_round rows (after a server restart)."""
        self.events = [ClientDpEvent.from_dict(row["event"]) for row in rows]
        if self.clipper is not None and rows:
            self.clipper.clip_norm = float(rows[-1]["next-clip-norm"])

    @property
    def clip_norm(self) -> float:
        return self.clipper.clip_norm if self.clipper else self.settings.client_dp_clip

    @property
    def update_noise_multiplier(self) -> float:
        """Sigma for the update sum (larger under adaptive clipping: the count shares it)."""
        return (
            self.clipper.update_noise_multiplier if self.clipper else self.settings.client_dp_noise
        )

    def plan(self, all_nodes: list[int], fixed_sample: list[int]) -> RoundPlan:
        """Sample this round's sites (Poisson, or the strategy's fixed-size sample)."""
        s = self.settings
        common = {
            "noise_multiplier": s.client_dp_noise,
            "rounds": 1,
            "clip_norm": self.clip_norm,
            "adaptive": s.client_dp_adaptive,
            "count_noise_std": s.client_dp_count_noise if s.client_dp_adaptive else None,
        }
        if s.client_sampling == "poisson":
            nodes = sample_clients(all_nodes, s.client_sampling_rate)
            expected = s.client_sampling_rate * len(all_nodes)
            event = ClientDpEvent(
                sampling="poisson", sampling_rate=s.client_sampling_rate, **common
            )
        else:
            nodes = fixed_sample
            expected = float(len(nodes))
            if len(nodes) < len(all_nodes):
                event = ClientDpEvent(
                    sampling="fixed", sample_size=len(nodes), population=len(all_nodes), **common
                )
            else:
                event = ClientDpEvent(sampling="none", **common)
        return RoundPlan(sorted(nodes), self.clip_norm, max(expected, 1.0), event)

    def epsilon(self, events: list[ClientDpEvent] | None = None) -> float:
        s = self.settings
        return client_level_epsilon(
            self.events if events is None else events, s.client_delta, s.client_accountant
        )

    def exceeds_budget(self, plan: RoundPlan) -> bool:
        """Whether releasing this round would take the run past its max client epsilon."""
        s = self.settings
        if s.client_max_epsilon <= 0:
            return False
        return would_exceed(
            self.events, plan.event, s.client_delta, s.client_max_epsilon, s.client_accountant
        )

    def release(
        self, plan: RoundPlan, clipped_sum: np.ndarray, fitted_count: float, reporting: int
    ) -> np.ndarray:
        """The round's noisy mean update; records the event and adapts C.

        In distributed mode the sum and the count arrive noised by the sites' own shares
        (client/local_round.py), sized for the honest shares any released sum holds.
        """
        noisy = clipped_sum
        central = self.settings.client_dp_noise_mode == "central"
        if central:
            std = central_noise_std(self.update_noise_multiplier, plan.clip_norm)
            noisy = clipped_sum + self.gaussian.normal(clipped_sum.shape, std)
        self.events.append(plan.event)
        if self.clipper is not None:
            self.clipper.update(fitted_count, reporting, plan.expected_sites, add_noise=central)
        return noisy / plan.expected_sites


def clip_and_sum(deltas: list[np.ndarray], clip_norm: float, length: int) -> tuple[np.ndarray, int]:
    """Server-side clipping (updates seen in the clear): clipped sum and how many fitted."""
    total = np.zeros(length)
    fitted = 0
    for delta in deltas:
        (clipped,), _, was_clipped = clip_update([delta], clip_norm)
        total += clipped
        fitted += not was_clipped
    return total, fitted
