"""A client's side of SecAgg+, as a state machine driven by the server's requests.

Each `handle()` call takes one request dict and returns the reply dict; nothing else crosses
the wire, so any transport (Flower messages, a test loop) can carry them. The state between
stages lives in this object and round-trips through `to_state()` / `from_state()` (values a
Flower ConfigRecord holds), because a Flower ClientApp is called afresh for every message.

A request is refused with `SecAggProtocolError` when it is misaddressed, out of order, from an
old session, replayed, carries a tampered or misrouted share, or asks for something the
protocol forbids: above all, both the self-mask share and the masking-key share of one peer,
which together would let the server strip that peer's masks. The client remembers what it
revealed for the whole session, so splitting such a request over two messages fails too.
A refused request leaves the state untouched.

With an `Identity` (its roster name, key and roster) the client runs the protocol against an
active server (Bonawitz et al. 2017, section 6; Bell et al. 2020): it signs its two public
keys, accepts only peers that the roster lists under distinct names with valid signatures
(and at least `min_peers` of them), signs the survivor set in a consistency stage, and
reveals shares only once `threshold` of its neighbours have signed the same survivor set, so
the server cannot swap keys, invent peers or tell two clients different dropout stories.
A client with an identity refuses the semi-honest protocol; one without refuses the other.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import create_shares

from privacy.errors import FedVaultError
from privacy.identity import Identity, signed_bytes, verify
from privacy.secagg import crypto
from privacy.secagg import messages as m
from privacy.secagg.config import RoundParams
from privacy.secagg.errors import SecAggProtocolError
from privacy.secagg.field import encode, encode_integers

log = logging.getLogger(__name__)

PAST_SESSIONS_KEPT = 256
_SELF_MASK = "self-mask"
_KEY = "key"
# Which stage must have been completed before each request is accepted.
_PREVIOUS = {
    m.SHARE_KEYS: (m.SETUP,),
    m.MASKED_INPUT: (m.SHARE_KEYS,),
    m.CONSISTENCY: (m.MASKED_INPUT,),
    m.UNMASK: (m.MASKED_INPUT, m.CONSISTENCY, m.UNMASK),
    m.STEP: (m.SHARE_KEYS, m.STEP),
}
_TABLES = ("peer_mask_pks", "peer_enc_pks", "seed_shares", "key_shares", "revealed", "peer_names")
KEYS_PURPOSE = "secagg-keys"
SURVIVORS_PURPOSE = "secagg-survivors"


def keys_signed_bytes(
    session: str,
    client_id: int,
    name: str,
    mask_pk: bytes,
    enc_pk: bytes,
    params: RoundParams,
    context: str,
) -> bytes:
    """What a client signs at setup: its two public keys, bound to its id, name and session,
    and to the round's parameters and `context` as it received them.

    A peer checks the signature against its own parameters and context, so a server that
    tells two clients different thresholds or run settings (say, different noise) gets
    their keys refused instead of a round in which each trusts the other's noise.
    """
    agreed = json.dumps(params.to_wire(), sort_keys=True)
    return signed_bytes(KEYS_PURPOSE, session, client_id, name, mask_pk, enc_pk, agreed, context)


def survivors_signed_bytes(session: str, survivors: list[int]) -> bytes:
    """What a client signs in the consistency stage: the session's survivor set."""
    return signed_bytes(SURVIVORS_PURPOSE, session, *sorted(survivors))


@dataclass
class _Session:
    session: str
    stage: str
    params: RoundParams
    mask_sk: bytes
    mask_pk: bytes
    enc_sk: bytes
    enc_pk: bytes
    seen_nonces: list[bytes] = field(default_factory=list)
    peer_mask_pks: dict[int, bytes] = field(default_factory=dict)
    peer_enc_pks: dict[int, bytes] = field(default_factory=dict)
    seed: bytes = b""
    seed_shares: dict[int, bytes] = field(default_factory=dict)
    key_shares: dict[int, bytes] = field(default_factory=dict)
    masked_with: list[int] = field(default_factory=list)
    revealed: dict[int, str] = field(default_factory=dict)
    out_of_range: int = -1
    peer_names: dict[int, str] = field(default_factory=dict)
    survivors: list[int] = field(default_factory=list)
    last_step: int = 0


class SecAggClient:
    """Client `client_id`'s protocol state across the four stages of a round."""

    def __init__(
        self,
        client_id: int,
        identity: Identity | None = None,
        min_peers: int = 0,
        context: str = "",
    ) -> None:
        if (
            not isinstance(client_id, int)
            or isinstance(client_id, bool)
            or not 1 <= client_id <= m.MAX_CLIENT_ID
        ):
            raise FedVaultError(f"client id must be an integer in [1, 2**64), got {client_id!r}")
        self.client_id = client_id
        self.identity = identity
        self.min_peers = min_peers
        self.context = context
        self._s: _Session | None = None
        self._past_sessions: list[str] = []

    @property
    def session(self) -> str | None:
        return self._s.session if self._s else None

    @property
    def params(self) -> RoundParams:
        """The parameters of the current session (validated at setup)."""
        if self._s is None:
            raise SecAggProtocolError("no secure-aggregation session has been set up")
        return self._s.params

    @property
    def stage(self) -> str | None:
        """The last stage this client completed in the current session."""
        return self._s.stage if self._s else None

    @property
    def out_of_range(self) -> int | None:
        """How many update values fell outside the clipping range this round (once masked)."""
        if self._s is None or self._s.out_of_range < 0:
            return None
        return self._s.out_of_range

    def handle(
        self,
        request: Mapping[str, Any],
        update: np.ndarray | None = None,
        weight: int | None = None,
    ) -> m.Message:
        """Answer any request; a masked-input request also needs `update` and `weight`.

        `update` is the flat float vector to aggregate, `weight` its integer aggregation weight
        (e.g. the number of training examples; 1 for an unweighted mean).
        """
        stage = m.read_header(request).stage
        if stage == m.SETUP:
            return self.setup(request)
        if stage == m.SHARE_KEYS:
            return self.share_keys(request)
        if stage == m.MASKED_INPUT:
            if update is None or weight is None:
                raise FedVaultError("a masked-input request needs the client's update and weight")
            return self.masked_input(request, update, weight)
        if stage == m.STEP:
            if update is None:
                raise FedVaultError("a step request needs the client's integer vector")
            return self.step(request, update)
        if stage == m.CONSISTENCY:
            return self.consistency(request)
        return self.unmask(request)

    # -- stages ---------------------------------------------------------------------------

    def setup(self, request: Mapping[str, Any]) -> m.Message:
        """Stage 1: accept the round's parameters, make two X25519 key pairs."""
        h = self._check_addressing(request, m.SETUP)
        if self._s is not None and h.session == self._s.session:
            raise SecAggProtocolError(f"replayed setup for session '{h.session}'")
        if h.session in self._past_sessions:
            raise SecAggProtocolError(f"stale setup for finished session '{h.session}'")
        try:
            params = RoundParams.from_wire(request)
        except FedVaultError as exc:
            raise SecAggProtocolError(f"setup parameters refused: {exc}") from exc
        if self.identity is not None and not params.authenticated:
            raise SecAggProtocolError(
                "this site requires authenticated secure aggregation (it has a roster); "
                "the server asked for the semi-honest protocol"
            )
        if self.identity is None and params.authenticated:
            raise SecAggProtocolError(
                "authenticated secure aggregation needs a roster and an identity key at the site"
            )
        if self._s is not None:
            if self._s.stage != m.UNMASK:
                log.warning(
                    "client %d: session '%s' abandoned at stage %s for new session '%s'",
                    self.client_id,
                    self._s.session,
                    self._s.stage,
                    h.session,
                )
            self._past_sessions = [*self._past_sessions, self._s.session][-PAST_SESSIONS_KEPT:]
        mask_sk, mask_pk = crypto.new_key_pair()
        enc_sk, enc_pk = crypto.new_key_pair()
        self._s = _Session(h.session, m.SETUP, params, mask_sk, mask_pk, enc_sk, enc_pk)
        self._s.seen_nonces.append(h.nonce)
        reply = {**self._reply_header(h), m.MASK_PK: mask_pk, m.ENC_PK: enc_pk}
        if self.identity is not None:
            name = self.identity.name
            signed = keys_signed_bytes(
                h.session, self.client_id, name, mask_pk, enc_pk, params, self.context
            )
            reply.update({m.NAME: name, m.SIGNATURE: self.identity.sign(signed)})
        return reply

    def setup_next(self, request: Mapping[str, Any]) -> tuple[SecAggClient, m.Message]:
        """Set up the session that follows this one while this one is still open.

        The two sessions live in two clients. The new one counts this client's sessions, the
        open one included, as past; this client counts the new one as past. So neither
        answers a request for the other's session, and once either is dropped, no setup for
        the new session is answered again. Returns the new client and its setup reply; a
        refused setup changes neither client.
        """
        if self._s is None:
            raise SecAggProtocolError("setup of a next session while no session is open")
        upcoming = SecAggClient(self.client_id, self.identity, self.min_peers, self.context)
        upcoming._past_sessions = [*self._past_sessions, self._s.session][-PAST_SESSIONS_KEPT:]
        reply = upcoming.setup(request)
        self._past_sessions = [*self._past_sessions, upcoming.session][-PAST_SESSIONS_KEPT:]
        return upcoming, reply

    def share_keys(self, request: Mapping[str, Any]) -> m.Message:
        """Stage 2: Shamir-share the self-mask seed and the masking key among the neighbours."""
        h, s = self._check_request(request, m.SHARE_KEYS)
        r = m.Reader(request, f"share-keys request to client {self.client_id}")
        peers = r.ids(m.PEER_IDS)
        mask_pks = r.blobs(m.PEER_MASK_PKS, crypto.KEY_BYTES)
        enc_pks = r.blobs(m.PEER_ENC_PKS, crypto.KEY_BYTES)
        if not len(peers) == len(mask_pks) == len(enc_pks):
            raise SecAggProtocolError("share-keys request: peer ids and keys differ in number")
        if self.client_id in peers:
            raise SecAggProtocolError("share-keys request lists this client as its own neighbour")
        t = s.params.threshold
        if len(peers) > s.params.num_neighbours:
            raise SecAggProtocolError(
                f"share-keys request lists {len(peers)} neighbours, "
                f"more than the round's {s.params.num_neighbours}"
            )
        if len(peers) + 1 < t:
            raise SecAggProtocolError(
                f"only {len(peers)} live neighbours: too few to hold {t} shares"
            )
        all_pks = [*mask_pks, *enc_pks, s.mask_pk, s.enc_pk]
        if len(set(all_pks)) != len(all_pks):
            raise SecAggProtocolError("share-keys request repeats a public key")
        peer_names = self._authenticate_peers(s, r, peers, mask_pks, enc_pks)

        seed = os.urandom(crypto.SEED_BYTES)
        holders = sorted([*peers, self.client_id])
        seed_shares = create_shares(seed, t, len(holders))
        key_shares = create_shares(s.mask_sk, t, len(holders))
        peer_enc = dict(zip(peers, enc_pks, strict=True))
        dsts, ciphertexts = [], []
        for holder, seed_share, key_share in zip(holders, seed_shares, key_shares, strict=True):
            if holder == self.client_id:
                own_seed_share, own_key_share = seed_share, key_share
                continue
            key = self._pair_key(s, s.enc_sk, peer_enc[holder], crypto.ENCRYPTION_PURPOSE, holder)
            dsts.append(holder)
            ciphertexts.append(
                crypto.seal_shares(key, self.client_id, holder, seed_share, key_share)
            )
        self._s = replace(
            s,
            stage=m.SHARE_KEYS,
            seen_nonces=[*s.seen_nonces, h.nonce],
            peer_mask_pks=dict(zip(peers, mask_pks, strict=True)),
            peer_enc_pks=peer_enc,
            peer_names=peer_names,
            seed=seed,
            seed_shares={self.client_id: own_seed_share},
            key_shares={self.client_id: own_key_share},
        )
        return {
            **self._reply_header(h),
            m.DST_IDS: dsts,
            m.CIPHERTEXTS: ciphertexts,
            m.SELF_MASK_COMMITMENT: crypto.commit(s.session, self.client_id, seed),
        }

    def check_masked_input(self, request: Mapping[str, Any]) -> None:
        """Raise SecAggProtocolError unless `masked_input` would accept `request`.

        Changes nothing: a site calls it before it spends anything on training, so a
        replayed, stale, out-of-order or tampered request costs it no privacy.
        """
        self._open_masked_input(request)

    def masked_input(
        self, request: Mapping[str, Any], update: np.ndarray, weight: int
    ) -> m.Message:
        """Stage 3: store the neighbours' shares, send weight * update plus all masks."""
        h, s, srcs, seed_shares, key_shares = self._open_masked_input(request)
        p = s.params
        if p.integer_input:
            vector, out_of_range = encode_integers(update, p), 0
        else:
            vector, out_of_range = encode(update, weight, p)
        if out_of_range:
            log.warning(
                "client %d: %d of %d update values outside the clipping range +-%g were "
                "clipped before secure aggregation",
                self.client_id,
                out_of_range,
                p.vector_length,
                p.clipping_range,
            )
        vector += crypto.self_mask(s.seed, len(vector), p.modulus_bits)
        for peer in srcs:
            key = self._pair_key(s, s.mask_sk, s.peer_mask_pks[peer], crypto.MASK_PURPOSE, peer)
            mask = crypto.prg(key, len(vector), p.modulus_bits)
            if self.client_id < peer:
                vector += mask
            else:
                vector -= mask
        if p.modulus_bits < 64:
            vector &= np.uint64(p.modulus - 1)
        # The seed and the secret keys are no longer needed: the shares stand in for them.
        self._s = replace(
            s,
            stage=m.MASKED_INPUT,
            seen_nonces=[*s.seen_nonces, h.nonce],
            mask_sk=b"",
            enc_sk=b"",
            seed=b"",
            seed_shares=seed_shares,
            key_shares=key_shares,
            masked_with=sorted(srcs),
            out_of_range=out_of_range,
        )
        return {**self._reply_header(h), m.MASKED_VECTOR: vector}

    def check_step(self, request: Mapping[str, Any]) -> None:
        """Raise SecAggProtocolError unless `step` would accept `request` (changes nothing)."""
        self._open_step(request)

    def step(self, request: Mapping[str, Any], update: np.ndarray) -> m.Message:
        """One step of a multi-step session: the int64 `update` masked for this step only.

        Every member masks with every other member, with keys derived for this step index,
        and the index must grow: a step is answered once, so no two vectors of this client
        ever share masks (their difference would show its inputs' difference in the clear).
        Masks cancel only in the sum of all members' vectors; there is no self-mask and no
        recovery: if a member does not answer, the step's sum cannot be unmasked at all,
        and the server starts a new session without it.
        """
        h, s, index = self._open_step(request)
        vector = encode_integers(update, s.params)
        label = f"{s.session}/step/{index}"
        for peer, peer_pk in s.peer_mask_pks.items():
            key = crypto.agree(s.mask_sk, peer_pk, crypto.MASK_PURPOSE, label, self.client_id, peer)
            mask = crypto.prg(key, len(vector), s.params.modulus_bits)
            if self.client_id < peer:
                vector += mask
            else:
                vector -= mask
        self._s = replace(s, stage=m.STEP, seen_nonces=[*s.seen_nonces, h.nonce], last_step=index)
        return {**self._reply_header(h), m.MASKED_VECTOR: vector}

    def _open_step(self, request: Mapping[str, Any]) -> tuple[m.Header, _Session, int]:
        h, s = self._check_request(request, m.STEP)
        if not s.params.multi_step:
            raise SecAggProtocolError("step request in a single-round session")
        index = request.get(m.STEP_INDEX)
        if isinstance(index, bool) or not isinstance(index, int):
            raise SecAggProtocolError(f"step request carries no step index, got {index!r}")
        if index <= s.last_step:
            raise SecAggProtocolError(
                f"step {index} requested after step {s.last_step} of this session: a step "
                "is answered once, in increasing order"
            )
        return h, s, index

    def _open_masked_input(
        self, request: Mapping[str, Any]
    ) -> tuple[m.Header, _Session, list[int], dict[int, bytes], dict[int, bytes]]:
        """Check a masked-input request and decrypt the shares it carries."""
        h, s = self._check_request(request, m.MASKED_INPUT)
        if s.params.multi_step:
            raise SecAggProtocolError("masked-input request in a multi-step session")
        r = m.Reader(request, f"masked-input request to client {self.client_id}")
        srcs = r.ids(m.SRC_IDS)
        ciphertexts = r.blobs(m.CIPHERTEXTS)
        if len(srcs) != len(ciphertexts):
            raise SecAggProtocolError("masked-input request: sources and ciphertexts differ")
        strangers = sorted(set(srcs) - set(s.peer_enc_pks))
        if strangers:
            raise SecAggProtocolError(
                f"masked-input request carries shares from non-neighbours {strangers}"
            )
        if len(srcs) + 1 < s.params.threshold:
            raise SecAggProtocolError(
                f"only {len(srcs)} neighbours shared keys: too few for threshold "
                f"{s.params.threshold}"
            )
        seed_shares, key_shares = dict(s.seed_shares), dict(s.key_shares)
        for src, ciphertext in zip(srcs, ciphertexts, strict=True):
            key = self._pair_key(s, s.enc_sk, s.peer_enc_pks[src], crypto.ENCRYPTION_PURPOSE, src)
            try:
                claimed_src, dst, seed_share, key_share = crypto.open_shares(key, ciphertext)
            except SecAggProtocolError as exc:
                raise SecAggProtocolError(f"share from client {src}: {exc.reason}") from exc
            if claimed_src != src:
                raise SecAggProtocolError(
                    f"share forwarded as from client {src} was sealed by client {claimed_src}"
                )
            if dst != self.client_id:
                raise SecAggProtocolError(
                    f"share addressed to client {dst} was routed to client {self.client_id}"
                )
            if (len(seed_share), len(key_share)) != (
                crypto.SEED_SHARE_BYTES,
                crypto.KEY_SHARE_BYTES,
            ):
                raise SecAggProtocolError(f"share from client {src} has the wrong length")
            seed_shares[src], key_shares[src] = seed_share, key_share

        return h, s, srcs, seed_shares, key_shares

    def consistency(self, request: Mapping[str, Any]) -> m.Message:
        """Authenticated stage: sign the survivor set, the only one this client will honour."""
        h, s = self._check_request(request, m.CONSISTENCY)
        if not s.params.authenticated:
            raise SecAggProtocolError("consistency request in a semi-honest session")
        r = m.Reader(request, f"consistency request to client {self.client_id}")
        survivors = r.ids(m.SURVIVOR_IDS)
        if self.client_id not in survivors:
            raise SecAggProtocolError("consistency request leaves this client out of the survivors")
        mine = {*s.masked_with, self.client_id}
        if len(mine & set(survivors)) < s.params.threshold:
            raise SecAggProtocolError(
                f"only {len(mine & set(survivors))} survivors in this neighbourhood, fewer "
                f"than the threshold {s.params.threshold}"
            )
        signature = self.identity.sign(survivors_signed_bytes(h.session, survivors))
        self._s = replace(
            s, stage=m.CONSISTENCY, seen_nonces=[*s.seen_nonces, h.nonce], survivors=survivors
        )
        return {**self._reply_header(h), m.SIGNATURE: signature}

    def unmask(self, request: Mapping[str, Any]) -> m.Message:
        """Last stage: self-mask shares of survivors, key shares of dropped peers, never both."""
        h, s = self._check_request(request, m.UNMASK)
        if s.params.authenticated and s.stage == m.MASKED_INPUT:
            raise SecAggProtocolError("unmask request before the survivor set was signed")
        r = m.Reader(request, f"unmask request to client {self.client_id}")
        survivors = r.ids(m.SURVIVOR_IDS)
        dropped = r.ids(m.DROPPED_IDS)
        if s.params.authenticated:
            self._check_consistency(h.session, s, r, survivors, dropped)
        both = sorted(set(survivors) & set(dropped))
        if both:
            raise SecAggProtocolError(
                f"refusing unmask request: it asks for both shares of client(s) {both}"
            )
        if self.client_id in dropped:
            raise SecAggProtocolError(
                "refusing unmask request: it asks for this client's own masking-key share"
            )
        expected = {*s.masked_with, self.client_id}
        asked = set(survivors) | set(dropped)
        if asked != expected:
            raise SecAggProtocolError(
                "unmask request does not match the neighbours this client masked with: "
                f"unknown {sorted(asked - expected)}, missing {sorted(expected - asked)}"
            )
        if len(survivors) < s.params.threshold:
            raise SecAggProtocolError(
                f"refusing unmask request: only {len(survivors)} survivors in this "
                f"neighbourhood, fewer than the threshold {s.params.threshold}"
            )
        conflicts = sorted(
            [v for v in survivors if s.revealed.get(v) == _KEY]
            + [v for v in dropped if s.revealed.get(v) == _SELF_MASK]
        )
        if conflicts:
            raise SecAggProtocolError(
                f"refusing unmask request: the other share of client(s) {conflicts} "
                "was already revealed in this session"
            )
        revealed = {**s.revealed, **dict.fromkeys(survivors, _SELF_MASK)}
        revealed.update(dict.fromkeys(dropped, _KEY))
        self._s = replace(
            s, stage=m.UNMASK, seen_nonces=[*s.seen_nonces, h.nonce], revealed=revealed
        )
        return {
            **self._reply_header(h),
            m.SELF_MASK_SHARE_IDS: survivors,
            m.SELF_MASK_SHARES: [s.seed_shares[v] for v in survivors],
            m.KEY_SHARE_IDS: dropped,
            m.KEY_SHARES: [s.key_shares[v] for v in dropped],
        }

    # -- authentication -------------------------------------------------------------------

    def _authenticate_peers(
        self,
        s: _Session,
        r: m.Reader,
        peers: list[int],
        mask_pks: list[bytes],
        enc_pks: list[bytes],
    ) -> dict[int, str]:
        """Peer id -> roster name, every key advertisement checked against the roster."""
        if self.identity is None:
            return {}
        names = r.names(m.PEER_NAMES)
        signatures = r.blobs(m.PEER_SIGNATURES)
        if not len(names) == len(signatures) == len(peers):
            raise SecAggProtocolError("share-keys request: peer names or signatures missing")
        roster = self.identity.roster
        for peer, name, mask_pk, enc_pk, signature in zip(
            peers, names, mask_pks, enc_pks, signatures, strict=True
        ):
            key = roster.key_of(name)
            if key is None:
                raise SecAggProtocolError(f"peer {peer} claims {name!r}, who is not on the roster")
            if name == self.identity.name:
                raise SecAggProtocolError(f"peer {peer} claims this site's own name {name!r}")
            signed = keys_signed_bytes(
                s.session, peer, name, mask_pk, enc_pk, s.params, self.context
            )
            if not verify(key, signed, signature):
                raise SecAggProtocolError(
                    f"the keys of peer {peer} ({name}) carry no valid signature of {name}: "
                    "substituted or forged"
                )
        if len(set(names)) != len(names):
            raise SecAggProtocolError("share-keys request lists one roster site twice")
        if len(names) < self.min_peers:
            raise SecAggProtocolError(
                f"only {len(names)} authenticated peers, this site requires {self.min_peers}"
            )
        return dict(zip(peers, names, strict=True))

    def _check_consistency(
        self,
        session: str,
        s: _Session,
        r: m.Reader,
        survivors: list[int],
        dropped: list[int],
    ) -> None:
        """The unmask request must follow the survivor set this client signed, and enough
        of its neighbours must have signed the same set."""
        signed_set = set(s.survivors)
        mine = {*s.masked_with, self.client_id}
        if set(survivors) != mine & signed_set or set(dropped) != set(s.masked_with) - signed_set:
            raise SecAggProtocolError(
                "unmask request contradicts the survivor set this client signed"
            )
        signers = r.ids(m.SIGNER_IDS)
        signatures = r.blobs(m.SIGNATURES)
        if len(signers) != len(signatures):
            raise SecAggProtocolError("unmask request: signers and signatures differ in number")
        data = survivors_signed_bytes(session, s.survivors)
        valid = {self.client_id}
        for signer, signature in zip(signers, signatures, strict=True):
            name = s.peer_names.get(signer)
            if signer not in mine or name is None:
                continue
            if verify(self.identity.roster.key_of(name), data, signature):
                valid.add(signer)
        if len(valid) < s.params.threshold:
            raise SecAggProtocolError(
                f"only {len(valid)} of this client's neighbourhood signed the survivor set it "
                f"signed, fewer than the threshold {s.params.threshold}: the server may be "
                "telling clients different dropout stories"
            )

    # -- checks ---------------------------------------------------------------------------

    def _check_addressing(self, request: Mapping[str, Any], stage: str) -> m.Header:
        h = m.read_header(request)
        if h.recipient != self.client_id:
            raise SecAggProtocolError(
                f"request addressed to client {h.recipient} reached client {self.client_id}"
            )
        if h.sender != m.SERVER_ID:
            raise SecAggProtocolError(f"request sent by {h.sender}, not by the server")
        if h.stage != stage:
            raise SecAggProtocolError(f"expected a {stage} request, got a {h.stage} request")
        return h

    def _check_request(self, request: Mapping[str, Any], stage: str) -> tuple[m.Header, _Session]:
        h = self._check_addressing(request, stage)
        s = self._s
        if s is None:
            raise SecAggProtocolError(f"{stage} request before any setup")
        if h.session != s.session:
            age = "stale" if h.session in self._past_sessions else "unknown"
            raise SecAggProtocolError(
                f"{stage} request for {age} session '{h.session}' (current session '{s.session}')"
            )
        if h.nonce in s.seen_nonces:
            raise SecAggProtocolError(f"replayed {stage} request")
        if s.stage not in _PREVIOUS[stage]:
            raise SecAggProtocolError(
                f"{stage} request out of order: last completed stage is {s.stage}"
            )
        return h, s

    def _pair_key(
        self, s: _Session, private_key: bytes, peer_public_key: bytes, purpose: bytes, peer: int
    ) -> bytes:
        return crypto.agree(private_key, peer_public_key, purpose, s.session, self.client_id, peer)

    def _reply_header(self, h: m.Header) -> m.Message:
        return m.make_header(h.session, h.stage, self.client_id, m.SERVER_ID, h.nonce)

    # -- persistence ----------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The whole state as ConfigRecord-compatible values (int, str, bytes, lists)."""
        state: dict[str, Any] = {
            "client_id": self.client_id,
            "past_sessions": list(self._past_sessions),
        }
        s = self._s
        if s is None:
            return state
        state.update({f"params.{k}": v for k, v in s.params.to_wire().items()})
        state.update(
            {
                "session": s.session,
                "stage": s.stage,
                "mask_sk": s.mask_sk,
                "mask_pk": s.mask_pk,
                "enc_sk": s.enc_sk,
                "enc_pk": s.enc_pk,
                "seed": s.seed,
                "seen_nonces": list(s.seen_nonces),
                "masked_with": list(s.masked_with),
                "out_of_range": s.out_of_range,
                "survivors": list(s.survivors),
                "last_step": s.last_step,
            }
        )
        for name in _TABLES:
            table: dict[int, Any] = getattr(s, name)
            state[f"{name}.ids"] = list(table)
            state[f"{name}.values"] = list(table.values())
        return state

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        identity: Identity | None = None,
        min_peers: int = 0,
        context: str = "",
    ) -> SecAggClient:
        """Rebuild a client from `to_state()` output (its identity and context its own)."""
        try:
            client = cls(state["client_id"], identity, min_peers, context)
            client._past_sessions = list(state["past_sessions"])
            if "session" not in state:
                return client
            params = RoundParams(
                **{k: state[f"params.{k}"] for k in RoundParams.__dataclass_fields__}
            )
            tables = {
                name: dict(zip(state[f"{name}.ids"], state[f"{name}.values"], strict=True))
                for name in _TABLES
            }
            client._s = _Session(
                session=state["session"],
                stage=state["stage"],
                params=params,
                mask_sk=state["mask_sk"],
                mask_pk=state["mask_pk"],
                enc_sk=state["enc_sk"],
                enc_pk=state["enc_pk"],
                seed=state["seed"],
                seen_nonces=list(state["seen_nonces"]),
                masked_with=list(state["masked_with"]),
                out_of_range=state["out_of_range"],
                survivors=list(state["survivors"]),
                last_step=state["last_step"],
                **tables,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FedVaultError(f"corrupt secure-aggregation client state: {exc}") from exc
        return client
