"""Which clients take part in a round: Poisson or fixed-size sampling.

Sampling amplifies privacy only if the accountant assumes the scheme that actually ran:
- Poisson (`sample_clients`): each client joins independently with probability q, so the
  number of participants is random. Accounted as `PoissonSampledDpEvent` under add/remove
  adjacency. A round that happens to select no client still releases a (pure-noise) model
  update and still counts.
- fixed-size (`sample_fixed`): m of the N clients, uniformly without replacement. Accounted
  as `SampledWithoutReplacementDpEvent`, which dp-accounting analyses only under replace-one
  adjacency (N public).

The selection must be secret from whoever is to be protected against, so the default source
is `random.SystemRandom` (the OS CSPRNG). Pass a seeded `random.Random` only in tests.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import TypeVar

from privacy.client_dp import checks
from privacy.errors import FedVaultError

NodeId = TypeVar("NodeId", bound=Hashable)


def sample_clients(
    node_ids: Sequence[NodeId], q: float, rng: random.Random | None = None
) -> list[NodeId]:
    """Poisson sampling: keep each node independently with probability `q` (order kept)."""
    q = checks.sampling_rate(q)
    source = rng if rng is not None else random.SystemRandom()
    return [node for node in _distinct(node_ids) if source.random() < q]


def sample_fixed(
    node_ids: Sequence[NodeId], m: int, rng: random.Random | None = None
) -> list[NodeId]:
    """Fixed-size sampling: `m` distinct nodes chosen uniformly without replacement."""
    nodes = _distinct(node_ids)
    m = checks.count("number of sampled clients", m)
    if m > len(nodes):
        raise FedVaultError(f"cannot sample {m} clients from {len(nodes)} available")
    source = rng if rng is not None else random.SystemRandom()
    return source.sample(nodes, m)


def _distinct(node_ids: Sequence[NodeId]) -> list[NodeId]:
    nodes = list(node_ids)
    if len(set(nodes)) != len(nodes):
        raise FedVaultError("client ids given for sampling contain duplicates")
    return nodes
