"""Secure aggregation (SecAgg+, Bell et al. 2020, on Bonawitz et al. 2017) as plain messages.

The server learns the weighted sum of the clients' updates and nothing about any one of them.
`SecAggServer` and `SecAggClient` are transport-agnostic state machines exchanging dicts (see
`messages`); server/ and client/ carry those dicts in Flower messages. Protocol, wire format,
parameters and arithmetic: docs/secure-aggregation.md.
"""

from privacy.secagg.client import SecAggClient
from privacy.secagg.config import RoundParams, SecAggConfig, default_num_neighbours
from privacy.secagg.errors import SecAggAbort, SecAggProtocolError
from privacy.secagg.server import SecAggResult, SecAggServer

__all__ = [
    "RoundParams",
    "SecAggAbort",
    "SecAggClient",
    "SecAggConfig",
    "SecAggProtocolError",
    "SecAggResult",
    "SecAggServer",
    "default_num_neighbours",
]
