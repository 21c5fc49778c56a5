"""The transport a deployed run used, as the process that started the SuperLink recorded it.

A ServerApp cannot see whether its SuperLink speaks TLS, so it does not guess: `fedvault
server` puts what it started into the SuperLink's environment, which the ServerApp process
inherits, and the run ledger records exactly that. A SuperLink started some other way
leaves nothing, and the report then says the transport was not recorded.
"""

from __future__ import annotations

import json
import os

from privacy.ledger import Ledger

TRANSPORT_ENV = "FEDVAULT_TRANSPORT"


def record_transport(ledger: Ledger) -> None:
    """Append the transport record, if the SuperLink's launcher left one."""
    raw = os.environ.get(TRANSPORT_ENV)
    if not raw:
        return
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        return
    if isinstance(record, dict):
        ledger.append("transport", record)
