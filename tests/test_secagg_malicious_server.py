"""Secure aggregation against an active server: what it tries, and what it gets.

The server here is the attacker: it runs the protocol with real clients but rewrites any
message it likes. Each attack is first shown to work against the semi-honest protocol (so
the test can fail), then run against the authenticated protocol, where it must get nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.shamir import combine_shares

from privacy.certs import CURVE
from privacy.identity import Identity, Roster
from privacy.secagg import (
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggProtocolError,
    SecAggServer,
    crypto,
)
from privacy.secagg import messages as m
from privacy.secagg.client import keys_signed_bytes, survivors_signed_bytes
from privacy.secagg.field import decode
from privacy.secagg.local import local_identities

D = 32
TARGET = 101


class Attack:
    """Four clients (classic SecAgg: everyone is everyone's neighbour, threshold 3)."""

    def __init__(self, authenticated: bool, min_peers: int = 0) -> None:
        rng = np.random.default_rng(5)
        self.ids = [101, 102, 103, 104]
        self.updates = {c: rng.uniform(-1, 1, D) for c in self.ids}
        config = SecAggConfig(authenticated=authenticated)
        self.server = SecAggServer(config, "attack", self.ids, D, seed=1)
        self.identities = local_identities(self.ids) if authenticated else {}
        self.clients = {c: SecAggClient(c, self.identities.get(c), min_peers) for c in self.ids}

    def answer(self, cid: int, request: dict) -> dict:
        return self.clients[cid].handle(request, self.updates[cid], 1)

    def honest_stage(self) -> None:
        self.server.receive([self.answer(c, r) for c, r in self.server.requests().items()])


def substitute_keys_and_unmask(attack: Attack) -> np.ndarray:
    """The attack of review finding H3: the server gives the target its own key pairs in
    place of the target's neighbours', decrypts every share the target sends, and unmasks
    the target's input alone. Returns what the server recovers."""
    attack.honest_stage()  # setup
    session = attack.server.session
    request = dict(attack.server.requests()[TARGET])
    peers = request[m.PEER_IDS]
    fake = {p: (crypto.new_key_pair(), crypto.new_key_pair()) for p in peers}
    request[m.PEER_MASK_PKS] = [fake[p][0][1] for p in peers]
    request[m.PEER_ENC_PKS] = [fake[p][1][1] for p in peers]
    target = attack.clients[TARGET]
    reply = target.handle(request)  # refused when authenticated
    target_mask_pk = attack.server._mask_pk[TARGET]
    target_enc_pk = attack.server._enc_pk[TARGET]
    seed_shares, key_shares = [], []
    for dst, ciphertext in zip(reply[m.DST_IDS], reply[m.CIPHERTEXTS], strict=True):
        key = crypto.agree(
            fake[dst][1][0], target_enc_pk, crypto.ENCRYPTION_PURPOSE, session, dst, TARGET
        )
        _, _, seed_share, key_share = crypto.open_shares(key, ciphertext)
        seed_shares.append(seed_share)
        key_shares.append(key_share)
    seed = combine_shares(seed_shares)
    # The masked-input request: shares "from" the fake neighbours, sealed by the server.
    srcs, ciphertexts = [], []
    for src in peers:
        key = crypto.agree(
            fake[src][1][0], target_enc_pk, crypto.ENCRYPTION_PURPOSE, session, src, TARGET
        )
        ciphertexts.append(crypto.seal_shares(key, src, TARGET, seed_shares[0], key_shares[0]))
        srcs.append(src)
    masked_request = {
        **m.make_header(session, m.MASKED_INPUT, m.SERVER_ID, TARGET, b"\x01" * 16),
        m.SRC_IDS: srcs,
        m.CIPHERTEXTS: ciphertexts,
    }
    vector = target.handle(masked_request, attack.updates[TARGET], 1)[m.MASKED_VECTOR]
    params = attack.server.params
    vector = vector - crypto.self_mask(seed, len(vector), params.modulus_bits)
    for peer in peers:
        key = crypto.agree(
            fake[peer][0][0], target_mask_pk, crypto.MASK_PURPOSE, session, TARGET, peer
        )
        mask = crypto.prg(key, len(vector), params.modulus_bits)
        vector = vector - mask if peer > TARGET else vector + mask
    recovered, weight, _ = decode(vector, params)
    assert weight == 1
    return recovered


def test_key_substitution_unmasks_one_site_in_the_semi_honest_protocol():
    attack = Attack(authenticated=False)
    recovered = substitute_keys_and_unmask(attack)
    step = attack.server.params.quantization_step
    assert np.abs(recovered - attack.updates[TARGET]).max() <= step  # the attack is real


def test_key_substitution_is_refused_when_keys_are_signed():
    attack = Attack(authenticated=True)
    with pytest.raises(SecAggProtocolError, match="no valid signature"):
        substitute_keys_and_unmask(attack)
    # The target sent nothing: no share, no masked input.
    assert attack.clients[TARGET].stage == m.SETUP


def _share_keys_request(attack: Attack) -> dict:
    attack.honest_stage()
    return dict(attack.server.requests()[TARGET])


def test_a_peer_off_the_roster_or_twice_on_it_is_refused():
    attack = Attack(authenticated=True)
    request = _share_keys_request(attack)
    names = request[m.PEER_NAMES]
    stranger = ec.generate_private_key(CURVE())
    sybil = Identity("mallory", stranger, Roster({"mallory": stranger.public_key()}))
    forged = {**request, m.PEER_NAMES: ["mallory", *names[1:]]}
    forged[m.PEER_SIGNATURES] = [
        sybil.sign(
            keys_signed_bytes(
                attack.server.session,
                request[m.PEER_IDS][0],
                "mallory",
                request[m.PEER_MASK_PKS][0],
                request[m.PEER_ENC_PKS][0],
                attack.server.params,
                "",
            )
        ),
        *request[m.PEER_SIGNATURES][1:],
    ]
    target = attack.clients[TARGET]
    with pytest.raises(SecAggProtocolError, match="not on the roster"):
        target.handle(forged)
    twice = {**request, m.PEER_NAMES: [names[0], names[0], names[2]]}
    with pytest.raises(SecAggProtocolError, match=r"no valid signature|twice"):
        target.handle(twice)
    mine = {**request, m.PEER_NAMES: [f"client-{TARGET}", *names[1:]]}
    with pytest.raises(SecAggProtocolError, match="own name"):
        target.handle(mine)
    target.handle(request)  # the untouched request is still accepted


def test_fewer_authenticated_peers_than_the_site_requires_is_refused():
    attack = Attack(authenticated=True, min_peers=4)
    with pytest.raises(SecAggProtocolError, match="only 3 authenticated peers"):
        attack.clients[TARGET].handle(_share_keys_request(attack))


def test_a_site_with_a_roster_refuses_the_semi_honest_protocol():
    identity = local_identities([TARGET])[TARGET]
    server = SecAggServer(SecAggConfig(authenticated=False), "s", [TARGET, 102], D)
    with pytest.raises(SecAggProtocolError, match="requires authenticated"):
        SecAggClient(TARGET, identity).handle(server.requests()[TARGET])


def _to_consistency(attack: Attack) -> None:
    for _ in range(3):  # setup, share-keys, masked-input
        attack.honest_stage()
    assert attack.server.stage == m.CONSISTENCY


def test_different_survivor_sets_for_different_sites_abort_with_nothing_exposed():
    """The server tells 101 and 102 that 103 dropped (to collect 103's masking-key shares)
    and tells 103 and 104 that everyone survived (to collect 103's self-mask shares)."""
    attack = Attack(authenticated=True)
    _to_consistency(attack)
    requests = attack.server.requests()
    everyone = sorted(attack.ids)
    without = [101, 102, 104]
    signatures = {}
    for cid, request in requests.items():
        story = without if cid in (101, 102) else everyone
        if cid not in story:
            continue
        reply = attack.clients[cid].handle({**request, m.SURVIVOR_IDS: story})
        signatures[cid] = (story, reply[m.SIGNATURE])
    revealed = {"seed": [], "key": []}
    refusals = 0
    for cid in (101, 102, 104):
        story, _ = signatures[cid]
        peers = [p for p in everyone if p != cid]
        signers = [p for p in peers if p in signatures]
        header = m.make_header(attack.server.session, m.UNMASK, m.SERVER_ID, cid, bytes([cid]) * 16)
        request = {
            **header,
            m.SURVIVOR_IDS: [p for p in everyone if p in story],
            m.DROPPED_IDS: [p for p in peers if p not in story],
            m.SIGNER_IDS: signers,
            m.SIGNATURES: [signatures[p][1] for p in signers],
        }
        try:
            reply = attack.clients[cid].handle(request)
        except SecAggProtocolError as exc:
            assert "signed the survivor set" in exc.reason
            refusals += 1
            continue
        if 103 in reply[m.SELF_MASK_SHARE_IDS]:
            revealed["seed"].append(cid)
        if 103 in reply[m.KEY_SHARE_IDS]:
            revealed["key"].append(cid)
    threshold = attack.server.params.threshold
    assert refusals >= 1
    # The server never holds a threshold of both kinds of 103's shares.
    assert not (len(revealed["seed"]) + 1 >= threshold and len(revealed["key"]) >= threshold)
    assert revealed["key"] == []  # the split story collects too few signatures on "dropped"


def test_claiming_an_honest_site_dropped_reveals_its_masking_key_not_its_input():
    """103 sent its masked input; the server tells everyone it dropped. The others reveal
    103's masking-key shares (as for any dropout) and refuse its self-mask shares, so 103's
    input stays hidden under its self mask and is not in the sum."""
    attack = Attack(authenticated=True)
    for _ in range(2):
        attack.honest_stage()
    masked = {c: attack.answer(c, r) for c, r in attack.server.requests().items()}
    attack.server.receive(masked.values())
    session = attack.server.session
    liars = [101, 102, 104]
    signatures = {}
    for cid in liars:
        request = {**attack.server.requests()[cid], m.SURVIVOR_IDS: liars}
        signatures[cid] = attack.clients[cid].handle(request)[m.SIGNATURE]
    key_shares = []
    for cid in liars:
        others = [p for p in liars if p != cid]
        header = m.make_header(session, m.UNMASK, m.SERVER_ID, cid, bytes([cid]) * 16)
        request = {
            **header,
            m.SURVIVOR_IDS: liars,
            m.DROPPED_IDS: [103],
            m.SIGNER_IDS: others,
            m.SIGNATURES: [signatures[p] for p in others],
        }
        reply = attack.clients[cid].handle(request)
        key_shares += reply[m.KEY_SHARES]
        # ... and then for 103's self-mask share too: refused, whatever the signatures.
        greedy = {**request, m.NONCE: bytes([cid + 1]) * 16, m.SURVIVOR_IDS: [*liars, 103]}
        greedy[m.DROPPED_IDS] = []
        with pytest.raises(SecAggProtocolError):
            attack.clients[cid].handle(greedy)
    secret = combine_shares(key_shares[: attack.server.params.threshold])
    assert crypto.public_key_of(secret) == attack.server._mask_pk[103]
    # With every pairwise mask of 103 removed, its vector is still uniform: the self mask.
    params = attack.server.params
    vector = masked[103][m.MASKED_VECTOR].copy()
    for peer in liars:
        key = crypto.agree(
            secret, attack.server._mask_pk[peer], crypto.MASK_PURPOSE, session, 103, peer
        )
        mask = crypto.prg(key, len(vector), params.modulus_bits)
        vector = vector - mask if peer > 103 else vector + mask
    guess, _, _ = decode(vector, params)
    assert abs(np.corrcoef(guess[:D], attack.updates[103])[0, 1]) < 0.5
    assert np.abs(guess[:D] - attack.updates[103]).mean() > 1.0


def test_an_unmask_request_contradicting_the_signed_survivors_is_refused():
    attack = Attack(authenticated=True)
    _to_consistency(attack)
    attack.honest_stage()  # consistency, honestly
    cid, request = next(iter(attack.server.requests().items()))
    other = next(p for p in request[m.SURVIVOR_IDS] if p != cid)
    twisted = {
        **request,
        m.SURVIVOR_IDS: [p for p in request[m.SURVIVOR_IDS] if p != other],
        m.DROPPED_IDS: [other],
    }
    with pytest.raises(SecAggProtocolError, match="contradicts the survivor set"):
        attack.clients[cid].handle(twisted)
    forged = {**request, m.SIGNATURES: [b"\x00" * 100 for _ in request[m.SIGNATURES]]}
    with pytest.raises(SecAggProtocolError, match="signed the survivor set"):
        attack.clients[cid].handle({**forged, m.NONCE: b"\x02" * 16})
    assert survivors_signed_bytes("s", [2, 1]) == survivors_signed_bytes("s", [1, 2])


def test_honest_authenticated_round_sums_exactly_and_aborts_cleanly_without_signatures():
    attack = Attack(authenticated=True)
    while not attack.server.done:
        attack.honest_stage()
    total = sum(attack.updates.values())
    assert np.abs(attack.server.result().weighted_sum - total).max() <= (
        4 * attack.server.params.quantization_step
    )
    silent = Attack(authenticated=True)
    _to_consistency(silent)
    with pytest.raises(SecAggAbort):
        silent.server.receive([])  # nobody signs the survivors: nothing can be unmasked
