"""The server's side of SecAgg+: route keys and shares, sum masked vectors, unmask the sum.

The server never sees a share in the clear or a single client's unmasked update; what it
learns is the weighted sum of the updates that arrived, their total weight and the total
number of clipped values. It is a state machine over four stages, each a round trip:
`requests()` gives one request per live client, `receive()` takes whatever replies came back
(missing ones count as dropouts) and moves to the next stage.

A reply that breaks the protocol is rejected with a logged reason: if it came from a client
that was asked, that client is treated as dropped; replays, stale sessions and unknown
senders are only recorded in `rejections`. Before any mask is applied (setup, share-keys) a
client whose live share holders fall below the threshold is simply excluded, which cannot
hurt the others. After masked inputs have arrived, every mask must be removable: if some
contributor's self-mask seed or some dropped client's masking key has fewer than `threshold`
live holders, the round raises `SecAggAbort` and yields nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares

from privacy.errors import FedVaultError
from privacy.secagg import crypto
from privacy.secagg import messages as m
from privacy.secagg.config import SecAggConfig
from privacy.secagg.errors import SecAggAbort, SecAggProtocolError
from privacy.secagg.field import decode, field_length
from privacy.secagg.graph import neighbour_graph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecAggResult:
    """What one round reveals: sums over the contributors, nothing per client.

    weighted_sum: sum over contributors of weight * clipped update (float64, dequantized).
    total_weight: sum of the contributors' weights.
    contributors: clients whose masked input is in the sum.
    out_of_range: total number of values clipped to the range, over all contributors.
    dropped: client id -> "stage: reason" for every client that left the protocol (one that
        left during unmask is still a contributor).
    max_error: bound on |mean - exact weighted mean of the clipped updates| per coordinate.
    """

    weighted_sum: np.ndarray
    total_weight: int
    contributors: tuple[int, ...]
    out_of_range: int
    dropped: dict[int, str]
    max_error: float

    @property
    def num_clients(self) -> int:
        return len(self.contributors)

    @property
    def mean(self) -> np.ndarray:
        """The weighted mean: weighted_sum / total_weight."""
        return self.weighted_sum / self.total_weight


class SecAggServer:
    """One secure-aggregation round over `client_ids`, driven stage by stage."""

    def __init__(
        self,
        config: SecAggConfig,
        session_id: str,
        client_ids: Sequence[int],
        vector_length: int,
        *,
        seed: int | None = None,
        integer_input: bool = False,
        multi_step: bool = False,
    ) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise FedVaultError("secure aggregation session id must be a non-empty string")
        ids = list(client_ids)
        if any(
            not isinstance(c, int) or isinstance(c, bool) or not 1 <= c <= m.MAX_CLIENT_ID
            for c in ids
        ):
            raise FedVaultError("client ids must be integers in [1, 2**64)")
        if len(set(ids)) != len(ids):
            raise FedVaultError("client ids must be distinct")
        self.config = config
        self.session = session_id
        self.params = config.resolve(len(ids), vector_length, integer_input, multi_step)
        self.neighbours = neighbour_graph(ids, self.params.num_neighbours, seed)
        self.dropped: dict[int, str] = {}
        self.faulty: set[int] = set()  # dropped for not answering or answering wrongly
        self.rejections: list[str] = []
        self.stage: str | None = m.SETUP
        self._abort_reason: str | None = None
        self._live: set[int] = set(ids)
        self._answered: set[int] = set()
        self._requests: dict[int, m.Message] = {}
        self._mask_pk: dict[int, bytes] = {}
        self._enc_pk: dict[int, bytes] = {}
        self._names: dict[int, str] = {}
        self._key_signatures: dict[int, bytes] = {}
        self._survivor_signatures: dict[int, bytes] = {}
        self._holders: dict[int, list[int]] = {}
        self._commitments: dict[int, bytes] = {}
        self._outgoing: dict[int, dict[int, bytes]] = {}
        self._masked_with: dict[int, list[int]] = {}
        self._sharers: set[int] = set()
        self._contributors: set[int] = set()
        self._sum = np.zeros(field_length(self.params), dtype=np.uint64)
        self._seed_shares: dict[int, list[bytes]] = {}
        self._key_shares: dict[int, list[bytes]] = {}
        self._result: SecAggResult | None = None
        wire = self.params.to_wire()
        self._issue({cid: dict(wire) for cid in sorted(self._live)})

    # -- driving --------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages of this round: the consistency stage only when authenticated; a
        multi-step session has key agreement, then steps."""
        if self.params.multi_step:
            return m.SESSION_STAGES
        return m.STAGES if self.params.authenticated else m.SEMI_HONEST_STAGES

    @property
    def members(self) -> tuple[int, ...]:
        """The sites that shared keys: every step of a multi-step session needs them all."""
        return tuple(sorted(self._sharers))

    def open_step(self, index: int) -> None:
        """Ask every member for step `index` (larger than the last) of a multi-step session."""
        self._check_not_aborted()
        if self.stage != m.STEP:
            raise FedVaultError(f"no step can be opened at stage {self.stage}")
        self._result = None
        self._sum = np.zeros(field_length(self.params), dtype=np.uint64)
        self._contributors = set()
        self._issue({cid: {m.STEP_INDEX: index} for cid in self.members})

    def requests(self) -> dict[int, m.Message]:
        """The current stage's request for each client still taking part."""
        self._check_not_aborted()
        return dict(self._requests)

    def receive(self, replies: Iterable[Mapping[str, Any]]) -> None:
        """Take the replies of the current stage (missing ones are dropouts) and advance."""
        self._check_not_aborted()
        if self.stage is None:
            raise FedVaultError("secure aggregation round already finished")
        stage = self.stage
        handlers: dict[str, Callable[[int, Mapping[str, Any]], None]] = {
            m.SETUP: self._on_setup,
            m.SHARE_KEYS: self._on_share_keys,
            m.MASKED_INPUT: self._on_masked_input,
            m.CONSISTENCY: self._on_consistency,
            m.UNMASK: self._on_unmask,
            m.STEP: self._on_masked_input,
        }
        for reply in replies:
            try:
                sender = self._check_header(reply, stage)
            except SecAggProtocolError as exc:
                self.rejections.append(f"{stage}: {exc.reason}")
                log.warning("secure aggregation %s: rejected a reply: %s", stage, exc.reason)
                continue
            self._answered.add(sender)
            try:
                handlers[stage](sender, reply)
            except SecAggProtocolError as exc:
                self.faulty.add(sender)
                self._drop(sender, f"{stage}: {exc.reason}")
        for cid in sorted(set(self._requests) - self._answered):
            self.faulty.add(cid)
            self._drop(cid, f"{stage}: no reply")
        stages = self.stages
        position = stages.index(stage) + 1
        self.stage = stages[position] if position < len(stages) else None
        if stage == m.STEP:
            self.stage = m.STEP
        try:
            {
                m.SETUP: self._after_setup,
                m.SHARE_KEYS: self._after_share_keys,
                m.MASKED_INPUT: self._after_masked_input,
                m.CONSISTENCY: self._after_consistency,
                m.UNMASK: self._after_unmask,
                m.STEP: self._after_step,
            }[stage]()
        except SecAggAbort as exc:
            self._abort_reason = exc.reason
            self._requests = {}
            log.error("secure aggregation session '%s' aborted: %s", self.session, exc.reason)
            raise

    def result(self) -> SecAggResult:
        """The unmasked aggregate, once the unmask stage has been received."""
        self._check_not_aborted()
        if self._result is None:
            raise FedVaultError(f"secure aggregation round not finished (stage {self.stage})")
        return self._result

    # -- reply handlers (raise SecAggProtocolError to drop the sender) --------------------

    def _on_setup(self, cid: int, reply: Mapping[str, Any]) -> None:
        r = m.Reader(reply, f"setup reply from client {cid}")
        mask_pk = r.blob(m.MASK_PK, crypto.KEY_BYTES)
        enc_pk = r.blob(m.ENC_PK, crypto.KEY_BYTES)
        if mask_pk == enc_pk:
            raise SecAggProtocolError("setup reply uses one key for both purposes")
        if self.params.authenticated:
            self._names[cid] = r.name(m.NAME)
            self._key_signatures[cid] = r.blob(m.SIGNATURE)
        self._mask_pk[cid], self._enc_pk[cid] = mask_pk, enc_pk

    def _on_share_keys(self, cid: int, reply: Mapping[str, Any]) -> None:
        r = m.Reader(reply, f"share-keys reply from client {cid}")
        dsts = r.ids(m.DST_IDS)
        ciphertexts = r.blobs(m.CIPHERTEXTS)
        commitment = r.blob(m.SELF_MASK_COMMITMENT, 32)
        if len(dsts) != len(ciphertexts):
            raise SecAggProtocolError("share-keys reply: destinations and ciphertexts differ")
        expected = set(self._holders[cid]) - {cid}
        if set(dsts) != expected:
            raise SecAggProtocolError(
                "share-keys reply: shares addressed to non-neighbours "
                f"{sorted(set(dsts) - expected)}, missing for {sorted(expected - set(dsts))}"
            )
        self._outgoing[cid] = dict(zip(dsts, ciphertexts, strict=True))
        self._commitments[cid] = commitment

    def _on_masked_input(self, cid: int, reply: Mapping[str, Any]) -> None:
        r = m.Reader(reply, f"masked-input reply from client {cid}")
        vector = r.vector(m.MASKED_VECTOR, len(self._sum), self.params.modulus_bits)
        self._sum += vector  # uint64 wraps modulo 2**64, a multiple of the modulus
        self._contributors.add(cid)

    def _on_consistency(self, cid: int, reply: Mapping[str, Any]) -> None:
        r = m.Reader(reply, f"consistency reply from client {cid}")
        self._survivor_signatures[cid] = r.blob(m.SIGNATURE)

    def _on_unmask(self, cid: int, reply: Mapping[str, Any]) -> None:
        r = m.Reader(reply, f"unmask reply from client {cid}")
        request = self._requests[cid]
        found: list[tuple[dict[int, list[bytes]], int, bytes]] = []
        for ids_key, shares_key, size, asked_key, table in (
            (
                m.SELF_MASK_SHARE_IDS,
                m.SELF_MASK_SHARES,
                crypto.SEED_SHARE_BYTES,
                m.SURVIVOR_IDS,
                self._seed_shares,
            ),
            (
                m.KEY_SHARE_IDS,
                m.KEY_SHARES,
                crypto.KEY_SHARE_BYTES,
                m.DROPPED_IDS,
                self._key_shares,
            ),
        ):
            owners = r.ids(ids_key)
            shares = r.blobs(shares_key, size)
            if len(owners) != len(shares) or set(owners) != set(request[asked_key]):
                raise SecAggProtocolError(
                    f"unmask reply: '{ids_key}' does not match the clients asked for"
                )
            for owner, share in zip(owners, shares, strict=True):
                if crypto.share_index(share) != self._holders[owner].index(cid) + 1:
                    raise SecAggProtocolError(
                        f"unmask reply: share of client {owner} has another holder's index"
                    )
                found.append((table, owner, share))
        for table, owner, share in found:
            table.setdefault(owner, []).append(share)

    # -- stage transitions ----------------------------------------------------------------

    def _after_setup(self) -> None:
        t = self.params.threshold
        self._exclude_thin(lambda u: {u, *self.neighbours[u]}, m.SETUP)
        self._require_enough_live(t, m.SETUP)
        requests = {}
        for cid in sorted(self._live):
            peers = sorted(self.neighbours[cid] & self._live)
            self._holders[cid] = sorted([*peers, cid])
            requests[cid] = {
                m.PEER_IDS: peers,
                m.PEER_MASK_PKS: [self._mask_pk[p] for p in peers],
                m.PEER_ENC_PKS: [self._enc_pk[p] for p in peers],
            }
            if self.params.authenticated:
                requests[cid][m.PEER_NAMES] = [self._names[p] for p in peers]
                requests[cid][m.PEER_SIGNATURES] = [self._key_signatures[p] for p in peers]
        self._issue(requests)

    def _after_share_keys(self) -> None:
        t = self.params.threshold
        self._exclude_thin(lambda u: set(self._holders[u]), m.SHARE_KEYS)
        self._require_enough_live(t, m.SHARE_KEYS)
        if self.params.multi_step:  # keys agreed: steps are opened one by one
            self._sharers, self._outgoing, self._requests = set(self._live), {}, {}
            return
        requests = {}
        for cid in sorted(self._live):
            srcs = sorted(self.neighbours[cid] & self._live)
            self._masked_with[cid] = srcs
            requests[cid] = {
                m.SRC_IDS: srcs,
                m.CIPHERTEXTS: [self._outgoing[src][cid] for src in srcs],
            }
        self._sharers = set(self._live)
        self._outgoing = {}
        self._issue(requests)

    def _after_step(self) -> None:
        missing = sorted(set(self.members) - self._contributors)
        self._require(
            not missing,
            f"member(s) {missing} did not answer the step: the masks of a multi-step "
            "session cancel only in the sum of all members, so nothing can be unmasked",
        )
        weighted_sum, total_weight, out_of_range = decode(self._sum, self.params)
        self._result = SecAggResult(
            weighted_sum=weighted_sum,
            total_weight=total_weight,
            contributors=self.members,
            out_of_range=out_of_range,
            dropped=dict(self.dropped),
            max_error=0.0,
        )
        self._requests = {}

    def _after_masked_input(self) -> None:
        t = self.params.threshold
        contributors = self._contributors
        self._require(
            len(contributors) >= t,
            f"only {len(contributors)} masked inputs arrived, threshold {t}",
        )
        self._check_recoverable(contributors)
        if self.params.authenticated:
            survivors = sorted(contributors)
            self._issue({cid: {m.SURVIVOR_IDS: survivors} for cid in survivors})
        else:
            self._issue_unmask()

    def _after_consistency(self) -> None:
        """Unmask, each request carrying the neighbourhood's signatures on the survivors."""
        self._check_recoverable(set(self._survivor_signatures) & self._live)
        self._issue_unmask()

    def _issue_unmask(self) -> None:
        contributors = self._contributors
        requests = {}
        for cid in sorted(contributors & self._live):
            peers = self._masked_with[cid]
            requests[cid] = {
                m.SURVIVOR_IDS: sorted({cid, *peers} & contributors),
                m.DROPPED_IDS: sorted(set(peers) - contributors),
            }
            if self.params.authenticated:
                signers = sorted(set(peers) & set(self._survivor_signatures))
                requests[cid][m.SIGNER_IDS] = signers
                requests[cid][m.SIGNATURES] = [self._survivor_signatures[p] for p in signers]
        self._issue(requests)

    def _after_unmask(self) -> None:
        p = self.params
        responders = self._live & self._contributors
        self._check_recoverable(responders)
        total = self._sum
        for owner in sorted(self._contributors):
            seed = self._combine(self._seed_shares[owner], owner, "self-mask seed")
            if crypto.commit(self.session, owner, seed) != self._commitments[owner]:
                raise SecAggAbort(
                    f"reconstructed self-mask seed of client {owner} does not match its "
                    "commitment (a holder returned a corrupt share)"
                )
            total -= crypto.self_mask(seed, len(total), p.modulus_bits)
        for owner in sorted(self._needed_keys()):
            secret = self._combine(self._key_shares[owner], owner, "masking key")
            if crypto.public_key_of(secret) != self._mask_pk[owner]:
                raise SecAggAbort(
                    f"reconstructed masking key of client {owner} does not match its public key"
                )
            for peer in sorted(self.neighbours[owner] & self._contributors):
                key = crypto.agree(
                    secret, self._mask_pk[peer], crypto.MASK_PURPOSE, self.session, owner, peer
                )
                mask = crypto.prg(key, len(total), p.modulus_bits)
                # The peer added +mask if its id is the smaller one, -mask otherwise.
                if peer < owner:
                    total -= mask
                else:
                    total += mask
        if p.modulus_bits < 64:
            total &= np.uint64(p.modulus - 1)
        weighted_sum, total_weight, out_of_range = decode(total, p)
        self._result = SecAggResult(
            weighted_sum=weighted_sum,
            total_weight=total_weight,
            contributors=tuple(sorted(self._contributors)),
            out_of_range=out_of_range,
            dropped=dict(self.dropped),
            max_error=p.quantization_step,
        )
        self._requests = {}
        log.info(
            "secure aggregation session '%s': sum of %d clients unmasked (%d dropped)",
            self.session,
            len(self._contributors),
            len(self.dropped),
        )

    # -- helpers --------------------------------------------------------------------------

    def _issue(self, payloads: dict[int, dict[str, Any]]) -> None:
        """Make `payloads` the current stage's requests, each with a fresh header."""
        stage = self.stage
        assert stage is not None
        self._answered = set()
        self._requests = {
            cid: {
                **m.make_header(self.session, stage, m.SERVER_ID, cid, os.urandom(m.NONCE_BYTES)),
                **payload,
            }
            for cid, payload in payloads.items()
        }

    def _check_header(self, reply: Any, stage: str) -> int:
        h = m.read_header(reply)
        if h.recipient != m.SERVER_ID:
            raise SecAggProtocolError(f"reply addressed to {h.recipient}, not to the server")
        if h.session != self.session:
            raise SecAggProtocolError(
                f"reply from {h.sender} for stale or unknown session '{h.session}'"
            )
        if h.stage != stage:
            raise SecAggProtocolError(f"{h.stage} reply from {h.sender} during the {stage} stage")
        if h.sender not in self._requests:
            known = h.sender in self.neighbours
            raise SecAggProtocolError(
                f"reply from {'client' if known else 'unknown sender'} {h.sender}, "
                "which was not asked in this stage"
            )
        if h.sender in self._answered:
            raise SecAggProtocolError(f"replayed {stage} reply from client {h.sender}")
        if h.nonce != self._requests[h.sender][m.NONCE]:
            raise SecAggProtocolError(
                f"{stage} reply from client {h.sender} answers another request (nonce mismatch)"
            )
        return h.sender

    def _drop(self, cid: int, reason: str) -> None:
        self._live.discard(cid)
        self.dropped.setdefault(cid, reason)
        log.warning("secure aggregation: client %d dropped (%s)", cid, reason)

    def _exclude_thin(self, holders_of: Callable[[int], set[int]], stage: str) -> None:
        """Before masking, exclude clients with fewer than `threshold` live share holders."""
        t = self.params.threshold
        changed = True
        while changed:
            changed = False
            for cid in sorted(self._live):
                live = len(holders_of(cid) & self._live)
                if live < t:
                    self._drop(cid, f"{stage}: only {live} live share holders, threshold {t}")
                    changed = True

    def _needed_keys(self) -> set[int]:
        """Clients that shared keys, sent no masked input, and left masks in the sum."""
        return {
            cid
            for cid in self._sharers - self._contributors
            if self.neighbours[cid] & self._contributors
        }

    def _check_recoverable(self, holders_alive: set[int]) -> None:
        """Abort unless every mask in the sum has `threshold` holders in `holders_alive`."""
        t = self.params.threshold
        short = {
            cid: len(set(self._holders[cid]) & holders_alive)
            for cid in sorted(self._contributors | self._needed_keys())
        }
        short = {cid: n for cid, n in short.items() if n < t}
        self._require(
            not short,
            "too many dropouts to remove the masks of client(s) "
            + ", ".join(f"{cid} ({n} of {t} shares)" for cid, n in short.items()),
        )

    def _combine(self, shares: list[bytes], owner: int, what: str) -> bytes:
        try:
            return combine_shares(shares[: self.params.threshold])
        except ValueError as exc:
            raise SecAggAbort(f"shares of the {what} of client {owner} do not combine") from exc

    def _require_enough_live(self, t: int, stage: str) -> None:
        self._require(
            len(self._live) >= t,
            f"only {len(self._live)} clients left after {stage} (dropouts, and clients whose "
            f"live share holders fell below the threshold), threshold {t}",
        )

    @staticmethod
    def _require(condition: bool, reason: str) -> None:
        if not condition:
            raise SecAggAbort(reason)

    def _check_not_aborted(self) -> None:
        if self._abort_reason is not None:
            raise SecAggAbort(self._abort_reason)
