"""Run a whole secure-aggregation round in one process: the reference driver.

It shows, in a dozen lines, what server/ and client/ do over Flower messages (each
`requests()` / `receive()` pair is one `Grid.send_and_receive`), and it is what the tests and
benchmarks/secagg.py use to simulate rounds with dropouts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from privacy.certs import CURVE
from privacy.identity import Identity, Roster
from privacy.secagg.client import SecAggClient
from privacy.secagg.config import SecAggConfig
from privacy.secagg.server import SecAggResult, SecAggServer


def local_identities(ids: Collection[int]) -> dict[int, Identity]:
    """A fresh identity per client and one roster naming them all (`client-<id>`)."""
    keys = {cid: ec.generate_private_key(CURVE()) for cid in ids}
    roster = Roster({f"client-{cid}": key.public_key() for cid, key in keys.items()})
    return {cid: Identity(f"client-{cid}", key, roster) for cid, key in keys.items()}


def run_round(
    config: SecAggConfig,
    updates: Mapping[int, np.ndarray],
    weights: Mapping[int, int],
    *,
    session: str = "local",
    seed: int | None = None,
    silent: Mapping[str, Collection[int]] | None = None,
    identities: Mapping[int, Identity] | None = None,
) -> SecAggResult:
    """Aggregate `updates` (client id -> flat vector) securely; `silent[stage]` never reply.

    An authenticated `config` needs the clients' identities; without `identities` each
    client gets a fresh one on a shared roster. Raises SecAggAbort when the dropouts leave
    a mask that cannot be removed.
    """
    silent = silent or {}
    ids = sorted(updates)
    vector_length = len(next(iter(updates.values())))
    server = SecAggServer(config, session, ids, vector_length, seed=seed)
    if config.authenticated and identities is None:
        identities = local_identities(ids)
    clients = {cid: SecAggClient(cid, (identities or {}).get(cid)) for cid in ids}
    while not server.done:
        stage = server.stage
        replies = [
            clients[cid].handle(request, updates[cid], weights[cid])
            for cid, request in server.requests().items()
            if cid not in silent.get(stage, ())
        ]
        server.receive(replies)
    return server.result()
