"""Run a whole secure-aggregation round in one process: the reference driver.

It shows, in a dozen lines, what server/ and client/ do over Flower messages (each
`requests()` / `receive()` pair is one `Grid.send_and_receive`), and it is what the tests and
benchmarks/secagg.py use to simulate rounds with dropouts. `LocalSteps` does the same for a
multi-step session (server/secure_round.py over messages), for the distributed DP-SGD tests
and benchmarks/distributed_step.py.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from privacy.certs import CURVE
from privacy.identity import Identity, Roster
from privacy.secagg import messages as m
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


class LocalSteps:
    """A multi-step session of integer vectors: one authenticated key agreement, then steps.

    `contexts` gives a client the run-settings context it binds into its keys (default
    "ctx" for all); clients that disagree refuse each other's keys.
    """

    def __init__(self, n: int, dim: int, contexts: Mapping[int, str] | None = None) -> None:
        self.ids = list(range(1, n + 1))
        identities = local_identities(self.ids)
        contexts = contexts or {}
        self.server = SecAggServer(
            SecAggConfig(), "steps", self.ids, dim, integer_input=True, multi_step=True
        )
        self.clients = {
            c: SecAggClient(c, identities[c], 0, contexts.get(c, "ctx")) for c in self.ids
        }
        while self.server.stage != m.STEP:
            replies = [self.clients[c].handle(r) for c, r in self.server.requests().items()]
            self.server.receive(replies)

    def step(
        self, index: int, vectors: Mapping[int, np.ndarray], silent: Collection[int] = ()
    ) -> np.ndarray:
        """The released sum of step `index`; the clients in `silent` never answer."""
        self.server.open_step(index)
        replies = [
            self.clients[c].handle(request, vectors[c])
            for c, request in self.server.requests().items()
            if c not in silent
        ]
        self.server.receive(replies)
        return self.server.result().weighted_sum
