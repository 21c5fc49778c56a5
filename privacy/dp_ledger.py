"""DP events in a ledger: the one place that knows how a `PrivacyEvent` row is laid out.

Kept apart so that accounting and the ledger stay independent of each other. A "dp_event"
row's payload is {"event": PrivacyEvent.to_dict(), "run_id": str, "round": int}.
"""

from __future__ import annotations

from privacy.accounting import PrivacyEvent
from privacy.errors import FedVaultError
from privacy.ledger import Ledger, Row

DP_EVENT = "dp_event"


def record_dp_event(ledger: Ledger, event: PrivacyEvent, *, run_id: str, server_round: int) -> Row:
    """Append `event`, spent by `run_id` in `server_round`, as a "dp_event" row."""
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise ValueError(f"server_round must be an int >= 0, got {server_round!r}")
    payload = {"event": event.to_dict(), "run_id": run_id, "round": server_round}
    return ledger.append(DP_EVENT, payload)


def dp_events(ledger: Ledger, run_id: str | None = None) -> list[PrivacyEvent]:
    """Every DP event recorded in `ledger` (only those of `run_id` if given), in order."""
    events = []
    for row in ledger.rows(DP_EVENT):
        if run_id is not None and row.payload.get("run_id") != run_id:
            continue
        if "event" not in row.payload:
            raise FedVaultError(f"ledger at {ledger.path} row {row.seq} holds no privacy event")
        events.append(PrivacyEvent.from_dict(row.payload["event"]))
    return events
