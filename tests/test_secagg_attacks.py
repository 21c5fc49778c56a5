"""SecAgg+ under attack: every forged, replayed, misrouted or greedy message is refused."""

from __future__ import annotations

import os

import numpy as np
import pytest

from privacy.secagg import (
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggProtocolError,
    SecAggServer,
    crypto,
)
from privacy.secagg import messages as m
from privacy.secagg.local import local_identities

D = 64


class Round:
    """A round driven by hand, so tests can stop at any stage and interfere.

    Semi-honest unless `authenticated`: these tests attack the checks every client makes
    whatever the mode; the authenticated protocol's own defences are attacked below.
    """

    def __init__(
        self,
        n: int = 5,
        k: int | None = None,
        session: str = "r1",
        seed: int = 0,
        authenticated: bool = False,
    ):
        rng = np.random.default_rng(seed)
        self.ids = list(range(101, 101 + n))
        self.updates = {c: rng.uniform(-1, 1, D) for c in self.ids}
        self.weights = {c: int(rng.integers(1, 50)) for c in self.ids}
        config = SecAggConfig(num_neighbours=k, authenticated=authenticated)
        self.server = SecAggServer(config, session, self.ids, D, seed=seed)
        self.identities = local_identities(self.ids) if authenticated else {}
        self.clients = {c: SecAggClient(c, self.identities.get(c)) for c in self.ids}

    def answer(self, cid: int, request: dict) -> dict:
        return self.clients[cid].handle(request, self.updates[cid], self.weights[cid])

    def replies(self) -> dict[int, dict]:
        return {c: self.answer(c, r) for c, r in self.server.requests().items()}

    def advance_to(self, stage: str) -> None:
        while self.server.stage != stage:
            self.server.receive(self.replies().values())

    def finish(self):
        while not self.server.done:
            self.server.receive(self.replies().values())
        return self.server.result()

    def expected_mean(self, contributors) -> np.ndarray:
        total = sum(self.weights[c] for c in contributors)
        return sum(self.weights[c] * self.updates[c] for c in contributors) / total


def refused(match: str):
    return pytest.raises(SecAggProtocolError, match=match)


# -- the client never reveals both shares of one peer --------------------------------------


def test_client_refuses_request_for_both_shares_of_one_peer():
    rnd = Round()
    rnd.advance_to(m.UNMASK)
    cid, request = next(iter(rnd.server.requests().items()))
    peer = next(p for p in request[m.SURVIVOR_IDS] if p != cid)
    greedy = {**request, m.DROPPED_IDS: [*request[m.DROPPED_IDS], peer]}
    with refused("both shares of client"):
        rnd.clients[cid].handle(greedy)


def test_client_remembers_what_it_revealed_across_requests():
    rnd = Round()
    rnd.advance_to(m.UNMASK)
    cid, request = next(iter(rnd.server.requests().items()))
    client = rnd.clients[cid]
    first = client.handle(request)
    assert first[m.KEY_SHARE_IDS] == [] and cid in first[m.SELF_MASK_SHARE_IDS]
    # The same request again with a fresh nonce (a retransmission) is answered alike...
    again = client.handle({**request, m.NONCE: os.urandom(16)})
    assert again[m.SELF_MASK_SHARES] == first[m.SELF_MASK_SHARES]
    # ...but now claiming a peer dropped, to get its key share as well, is refused.
    peer = next(p for p in request[m.SURVIVOR_IDS] if p != cid)
    switched = {
        **request,
        m.NONCE: os.urandom(16),
        m.SURVIVOR_IDS: [p for p in request[m.SURVIVOR_IDS] if p != peer],
        m.DROPPED_IDS: [peer],
    }
    with refused(f"other share of client\\(s\\) \\[{peer}\\] was already revealed"):
        client.handle(switched)


def test_client_refuses_to_reveal_its_own_key_or_with_too_few_survivors():
    rnd = Round(n=6, k=5)  # classic, threshold 4
    rnd.advance_to(m.UNMASK)
    cid, request = next(iter(rnd.server.requests().items()))
    others = [p for p in request[m.SURVIVOR_IDS] if p != cid]
    with refused("own masking-key share"):
        rnd.clients[cid].handle({**request, m.SURVIVOR_IDS: others, m.DROPPED_IDS: [cid]})
    with refused("fewer than the threshold"):
        rnd.clients[cid].handle(
            {**request, m.SURVIVOR_IDS: [cid, *others[:2]], m.DROPPED_IDS: others[2:]}
        )


# -- client-side rejections ----------------------------------------------------------------


def _masked_input_request(rnd: Round) -> tuple[int, dict]:
    rnd.advance_to(m.MASKED_INPUT)
    return next(iter(rnd.server.requests().items()))


def test_tampered_ciphertext_is_rejected():
    rnd = Round()
    cid, request = _masked_input_request(rnd)
    token = bytearray(request[m.CIPHERTEXTS][0])
    token[40] = ord("A") if token[40] != ord("A") else ord("B")
    tampered = {**request, m.CIPHERTEXTS: [bytes(token), *request[m.CIPHERTEXTS][1:]]}
    with refused("failed authentication"):
        rnd.clients[cid].handle(tampered, rnd.updates[cid], rnd.weights[cid])
    # A refused request leaves the client able to answer the genuine one.
    reply = rnd.clients[cid].handle(request, rnd.updates[cid], rnd.weights[cid])
    assert reply[m.MASKED_VECTOR].shape == (D + 2,)


def test_share_meant_for_another_client_is_rejected():
    rnd = Round()
    rnd.advance_to(m.MASKED_INPUT)
    requests = rnd.server.requests()
    a, b = sorted(requests)[:2]
    src = next(s for s in requests[b][m.SRC_IDS] if s in requests[a][m.SRC_IDS])
    stolen = requests[b][m.CIPHERTEXTS][requests[b][m.SRC_IDS].index(src)]
    slot = requests[a][m.SRC_IDS].index(src)
    misrouted = dict(requests[a])
    misrouted[m.CIPHERTEXTS] = list(requests[a][m.CIPHERTEXTS])
    misrouted[m.CIPHERTEXTS][slot] = stolen
    with refused(f"share from client {src}: .*not meant for this client"):
        rnd.answer(a, misrouted)


def test_share_sealed_for_the_right_pair_but_addressed_elsewhere_is_rejected():
    rnd = Round()
    cid, request = _masked_input_request(rnd)
    src = request[m.SRC_IDS][0]
    sender = rnd.clients[src]._s
    key = crypto.agree(
        sender.enc_sk, rnd.clients[cid]._s.enc_pk, crypto.ENCRYPTION_PURPOSE, "r1", src, cid
    )
    forged = crypto.seal_shares(
        key, src, 999, bytes(crypto.SEED_SHARE_BYTES), bytes(crypto.KEY_SHARE_BYTES)
    )
    cts = [forged, *request[m.CIPHERTEXTS][1:]]
    with refused("share addressed to client 999 was routed to client"):
        rnd.answer(cid, {**request, m.CIPHERTEXTS: cts})


def test_shares_from_non_neighbours_are_rejected():
    rnd = Round(n=8, k=2)
    cid, request = _masked_input_request(rnd)
    stranger = next(c for c in rnd.ids if c != cid and c not in request[m.SRC_IDS])
    forged = {
        **request,
        m.SRC_IDS: [*request[m.SRC_IDS], stranger],
        m.CIPHERTEXTS: [*request[m.CIPHERTEXTS], b"x"],
    }
    with refused("non-neighbours"):
        rnd.answer(cid, forged)


def test_replayed_wrong_stage_and_misaddressed_requests_are_rejected():
    rnd = Round()
    setup = rnd.server.requests()
    rnd.server.receive(rnd.replies().values())
    share_keys = rnd.server.requests()
    cid = rnd.ids[0]
    client = rnd.clients[cid]
    with refused("replayed setup"):
        client.handle(setup[cid])
    client.handle(share_keys[cid])
    with refused("replayed share-keys request"):
        client.handle(share_keys[cid])
    with refused("expected a unmask request, got a share-keys request"):
        client.unmask(share_keys[cid])
    skip = {**share_keys[cid], m.STAGE: m.UNMASK, m.NONCE: os.urandom(16)}
    with refused("unmask request out of order: last completed stage is share-keys"):
        client.handle(skip)
    with refused("addressed to client"):
        rnd.clients[rnd.ids[1]].handle(share_keys[cid])
    with refused("not by the server"):
        client.handle({**share_keys[cid], m.SENDER: rnd.ids[1]})


def test_requests_of_a_finished_session_are_stale():
    rnd = Round(session="r1")
    rnd.advance_to(m.UNMASK)
    old_unmask = rnd.server.requests()
    old_setup_cid = rnd.ids[0]
    rnd.finish()
    fresh = SecAggServer(SecAggConfig(authenticated=False), "r2", rnd.ids, D)
    client = rnd.clients[old_setup_cid]
    client.handle(fresh.requests()[old_setup_cid])
    replay = {**old_unmask[old_setup_cid], m.NONCE: os.urandom(16)}
    with refused("stale session 'r1'"):
        client.handle(replay)
    old_setup = {**fresh.requests()[old_setup_cid], m.SESSION: "r1"}
    with refused("stale setup for finished session 'r1'"):
        client.handle(old_setup)


def test_malformed_setup_parameters_are_rejected():
    rnd = Round(n=6)
    cid, request = next(iter(rnd.server.requests().items()))
    with refused("must exceed half"):
        rnd.clients[cid].handle({**request, "threshold": 2})
    with refused("header field 'nonce'"):
        rnd.clients[cid].handle({**request, m.NONCE: b"short"})


# -- server-side rejections ----------------------------------------------------------------


def test_server_rejects_replays_stale_sessions_and_strangers_without_dropping():
    rnd = Round()
    setup_replies = rnd.replies()
    rnd.server.receive(setup_replies.values())
    replies = rnd.replies()
    cid = rnd.ids[0]
    noise = [
        replies[cid],  # duplicate of a genuine reply
        setup_replies[cid],  # last stage's reply
        {**replies[cid], m.SESSION: "r0"},  # stale session
        {**replies[cid], m.SENDER: 4242},  # unknown sender
        {**replies[cid], m.RECIPIENT: rnd.ids[1]},  # not for the server
    ]
    rnd.server.receive([*replies.values(), *noise])
    reasons = "\n".join(rnd.server.rejections)
    assert f"replayed share-keys reply from client {cid}" in reasons
    assert f"setup reply from {cid} during the share-keys stage" in reasons
    assert "stale or unknown session 'r0'" in reasons
    assert "unknown sender 4242" in reasons
    assert "not to the server" in reasons
    assert rnd.server.dropped == {}
    result = rnd.finish()
    assert np.allclose(result.mean, rnd.expected_mean(rnd.ids), atol=result.max_error)


def test_server_rejects_reply_answering_another_request():
    rnd = Round()
    replies = rnd.replies()
    cid = rnd.ids[2]
    replies[cid] = {**replies[cid], m.NONCE: os.urandom(16)}
    rnd.server.receive(replies.values())
    assert any("nonce mismatch" in r for r in rnd.server.rejections)
    assert rnd.server.dropped[cid] == "setup: no reply"


def test_wrong_length_vector_drops_only_its_sender():
    rnd = Round(n=6, k=5)
    rnd.advance_to(m.MASKED_INPUT)
    replies = rnd.replies()
    bad = rnd.ids[3]
    replies[bad] = {**replies[bad], m.MASKED_VECTOR: replies[bad][m.MASKED_VECTOR][:-1]}
    rnd.server.receive(replies.values())
    assert "has shape" in rnd.server.dropped[bad]
    result = rnd.finish()
    contributors = [c for c in rnd.ids if c != bad]
    assert result.contributors == tuple(contributors)
    assert np.allclose(result.mean, rnd.expected_mean(contributors), atol=result.max_error)


def test_vector_outside_the_field_or_of_wrong_type_is_rejected():
    rnd = Round(n=4)
    rnd.advance_to(m.MASKED_INPUT)
    replies = rnd.replies()
    a, b = rnd.ids[:2]
    replies[a] = {**replies[a], m.MASKED_VECTOR: replies[a][m.MASKED_VECTOR].astype(np.float64)}
    replies[b] = {**replies[b], m.MASKED_VECTOR: np.full(D + 2, -1, dtype=np.int64)}
    with pytest.raises(SecAggAbort, match="only 2 masked inputs arrived"):
        rnd.server.receive(replies.values())
    assert "integer numpy array" in rnd.server.dropped[a]
    assert "non-negative" in rnd.server.dropped[b]
    with pytest.raises(SecAggAbort):
        rnd.server.requests()


def test_share_keys_reply_with_shares_for_non_neighbours_drops_sender():
    rnd = Round(n=8, k=2)
    rnd.advance_to(m.SHARE_KEYS)
    replies = rnd.replies()
    cid = rnd.ids[0]
    outsider = next(c for c in rnd.ids if c != cid and c not in replies[cid][m.DST_IDS])
    replies[cid] = {
        **replies[cid],
        m.DST_IDS: [*replies[cid][m.DST_IDS][:-1], outsider],
    }
    rnd.server.receive(replies.values())
    assert f"non-neighbours [{outsider}]" in rnd.server.dropped[cid]


def test_unmask_reply_with_unrequested_or_misindexed_shares_drops_sender():
    rnd = Round(n=7, k=6)  # classic, threshold 5: two unmask replies may be lost
    rnd.advance_to(m.UNMASK)
    replies = rnd.replies()
    greedy, liar = rnd.ids[:2]
    owner = replies[greedy][m.SELF_MASK_SHARE_IDS][0]
    replies[greedy] = {
        **replies[greedy],
        m.KEY_SHARE_IDS: [owner],
        m.KEY_SHARES: [rnd.clients[greedy]._s.key_shares[owner]],  # held, never to be sent
    }
    shares = list(replies[liar][m.SELF_MASK_SHARES])
    shares[0] = (99).to_bytes(4, "little") + shares[0][4:]
    replies[liar] = {**replies[liar], m.SELF_MASK_SHARES: shares}
    rnd.server.receive(replies.values())
    assert "does not match the clients asked for" in rnd.server.dropped[greedy]
    assert "another holder's index" in rnd.server.dropped[liar]
    result = rnd.server.result()
    assert result.contributors == tuple(rnd.ids)  # their inputs arrived before unmask
    assert np.allclose(result.mean, rnd.expected_mean(rnd.ids), atol=result.max_error)


def test_corrupt_share_is_detected_not_silently_aggregated():
    rnd = Round(n=5, k=4)
    rnd.advance_to(m.UNMASK)
    replies = rnd.replies()
    cid = rnd.ids[0]
    shares = list(replies[cid][m.SELF_MASK_SHARES])
    shares[0] = shares[0][:4] + bytes(b ^ 0x5A for b in shares[0][4:])
    replies[cid] = {**replies[cid], m.SELF_MASK_SHARES: shares}  # first, so it is combined
    with pytest.raises(SecAggAbort, match=r"(commitment|do not combine)"):
        rnd.server.receive(replies.values())
