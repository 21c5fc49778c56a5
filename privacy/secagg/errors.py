"""Exceptions of the secure-aggregation protocol.

Two different failures need two different reactions: a single bad message (wrong stage,
replay, tampered ciphertext, misrouted share) is rejected and its sender treated as dropped,
while a round that can no longer be unmasked is aborted as a whole. Both are FedVaultErrors so
the CLI prints them as one line.
"""

from __future__ import annotations

from privacy.errors import FedVaultError


class SecAggProtocolError(FedVaultError):
    """A message broke the protocol; `reason` says how, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SecAggAbort(FedVaultError):
    """The round cannot produce an exact aggregate any more; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"secure aggregation aborted: {reason}")
        self.reason = reason
