"""The neighbour graph of SecAgg+: who masks with whom and who holds whose shares.

Bell et al. (2020) replace SecAgg's complete graph by a sparse random regular graph, which
turns the server's quadratic work into n log n. We use the construction they recommend in
practice: a Harary graph (each client linked to the k/2 nearest on each side of a ring, plus
the opposite client when k is odd) over a random permutation of the clients. Degree n - 1 is
the complete graph, i.e. classic SecAgg. The permutation comes from a seed when one is given
(tests, reproducible simulations) and from the operating system's CSPRNG otherwise.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence

from privacy.errors import FedVaultError


def neighbour_graph(
    client_ids: Sequence[int], degree: int, seed: int | None = None
) -> dict[int, frozenset[int]]:
    """Map each client to its `degree` neighbours in a random regular graph."""
    n = len(client_ids)
    if len(set(client_ids)) != n:
        raise FedVaultError("client ids must be distinct")
    if not 1 <= degree <= n - 1 or (degree < n - 1 and (n * degree) % 2):
        raise FedVaultError(f"no {degree}-regular graph exists on {n} clients")
    if degree == n - 1:
        everyone = frozenset(client_ids)
        return {cid: everyone - {cid} for cid in client_ids}
    ring = list(client_ids)
    rng = random.Random(seed) if seed is not None else secrets.SystemRandom()
    rng.shuffle(ring)
    offsets = list(range(1, degree // 2 + 1))
    offsets += [-o for o in offsets]
    if degree % 2:
        offsets.append(n // 2)
    return {
        cid: frozenset(ring[(pos + off) % n] for off in offsets) for pos, cid in enumerate(ring)
    }
