"""The site's budget guard: plan a round's DP-SGD, refuse it if it would exceed the budget.

The ledger in the site's state directory holds every privacy event the site's data has ever
been through, across rounds and runs; epsilon is derived from those events. Before a round
the site computes the epsilon it would reach after it, and declines if that passes its own
`max-epsilon`. The budget and delta come from the site, never from the server.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from flwr.app import ConfigRecord, RecordDict

from client.data import SiteData
from client.site import Site
from client.training import DpSgd, TrainResult
from privacy.accounting import PrivacyEvent, compute_epsilon, solve_noise_multiplier
from privacy.dp_ledger import dp_events, record_dp_event
from privacy.errors import FedVaultError
from privacy.ledger import Ledger, dataset_fingerprint
from tasks.settings import RunSettings

DEFAULT_MAX_EPSILON = 10.0
PLAN_KEY = "dp-plan"
ROUND_KEY = "dp-round"


class BudgetExhausted(Exception):
    """This round would take the site past its max epsilon; it trains nothing."""

    def __init__(self, site: str, spent: float, after: float, limit: float) -> None:
        super().__init__(
            f"{site}: budget exhausted: epsilon {spent:.3f} spent, this round would reach "
            f"{after:.3f} > max {limit:g}"
        )
        self.site, self.spent, self.after, self.limit = site, spent, after, limit

    def to_record(self) -> dict[str, str | float]:
        return {
            "reason": "budget-exhausted",
            "site": self.site,
            "epsilon-spent": self.spent,
            "epsilon-after-round": self.after,
            "max-epsilon": self.limit,
        }


def poisson_plan(num_records: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Sampling rate and steps of Opacus' Poisson loader: q = 1/ceil(N/B), ceil(N/B) per epoch."""
    batches = math.ceil(num_records / min(batch_size, num_records))
    return 1.0 / batches, epochs * batches


@dataclass
class SiteBudget:
    """A site's ledger plus the run's mechanism settings and the site's own limits."""

    site: Site
    settings: RunSettings
    ledger: Ledger
    num_records: int
    state: RecordDict

    @classmethod
    def open(
        cls, site: Site, settings: RunSettings, data: SiteData, state: RecordDict
    ) -> SiteBudget:
        if site.delta * len(data.y_train) >= 1:
            raise FedVaultError(
                f"{site.name}: delta {site.delta:g} must be below 1/records = "
                f"{1 / len(data.y_train):.2e} (otherwise a record may leak with probability delta)"
            )
        fingerprint = dataset_fingerprint([data.x_train, data.y_train])
        path = site.state_dir / f"ledger-{fingerprint[:16]}.sqlite"
        ledger = Ledger.open(path, kind="site", fingerprint=fingerprint)
        return cls(site, settings, ledger, len(data.y_train), state)

    @property
    def max_epsilon(self) -> float:
        return self.site.max_epsilon or DEFAULT_MAX_EPSILON

    def plan_round(self, server_round: int) -> DpSgd:
        """The round's DP-SGD settings, or BudgetExhausted if it would pass the limit."""
        s = self.settings
        q, steps = poisson_plan(self.num_records, s.batch_size, s.local_epochs)
        history = dp_events(self.ledger)
        sigma = s.noise_multiplier or self._planned_sigma(q, steps, history)
        event = PrivacyEvent(
            noise_multiplier=sigma, sample_rate=q, steps=steps, clip_norm=s.clip_norm
        )
        after = self._epsilon_after(server_round, history, event)
        if after > self.max_epsilon:
            spent = compute_epsilon(history, self.site.delta, s.accountant)
            raise BudgetExhausted(self.site.name, spent, after, self.max_epsilon)
        return DpSgd(
            noise_multiplier=sigma,
            clip_norm=s.clip_norm,
            secure_mode=s.secure_mode,
            grad_sample_mode=s.grad_sample_mode,
        )

    def _epsilon_after(
        self, server_round: int, history: list[PrivacyEvent], event: PrivacyEvent
    ) -> float:
        """Epsilon once this round's event is spent; computed once per round (it is costly).

        Under secure aggregation a site plans at setup and again at masked input; the
        cached value is reused only for the same round, event and ledger length.
        """
        key = {
            "round": server_round,
            "ledger-rows": len(self.ledger),
            "event": json.dumps(event.to_dict(), sort_keys=True),
        }
        cached = self.state.get(ROUND_KEY)
        if cached is not None and all(cached.get(k) == v for k, v in key.items()):
            return float(cached["epsilon-after"])
        after = compute_epsilon([*history, event], self.site.delta, self.settings.accountant)
        self.state[ROUND_KEY] = ConfigRecord({**key, "epsilon-after": after})
        return after

    def _planned_sigma(self, q: float, steps: int, history: list[PrivacyEvent]) -> float:
        """Sigma for the whole run's planned rounds, solved once per run and kept in state."""
        if PLAN_KEY in self.state:
            return float(self.state[PLAN_KEY]["noise-multiplier"])
        s = self.settings
        target = min(s.target_epsilon, self.max_epsilon)
        sigma = solve_noise_multiplier(
            target, self.site.delta, q, steps * s.num_rounds, s.accountant, prior_events=history
        )
        self.state[PLAN_KEY] = ConfigRecord({"noise-multiplier": sigma})
        return sigma

    def record_round(self, run_id: str, server_round: int, dp: DpSgd, result: TrainResult) -> dict:
        """Append the event that ran; return the site's privacy summary for the server."""
        event = PrivacyEvent(
            noise_multiplier=dp.noise_multiplier,
            sample_rate=result.sample_rate,
            steps=result.steps,
            clip_norm=dp.clip_norm,
        )
        history = dp_events(self.ledger)
        epsilon = self._epsilon_after(server_round, history, event)
        record_dp_event(self.ledger, event, run_id=run_id, server_round=server_round)
        history.append(event)
        return {
            "site": self.site.name,
            "delta": self.site.delta,
            "max-epsilon": self.max_epsilon,
            "epsilon": epsilon,
            "epsilon-rdp": compute_epsilon(history, self.site.delta, "rdp"),
            "accountant": self.settings.accountant,
            "event": event.to_dict(),
            "events": [e.to_dict() for e in history],
            "ledger-head": self.ledger.head(),
        }

    def record_refusal(self, run_id: str, server_round: int, refusal: BudgetExhausted) -> None:
        self.ledger.append(
            "refusal", {**refusal.to_record(), "run_id": run_id, "round": server_round}
        )

    def __enter__(self) -> SiteBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ledger.close()
