"""The server's handling of secure-aggregation replies, without the engine."""

from types import SimpleNamespace

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from privacy.secagg import SecAggClient, SecAggConfig, SecAggServer
from privacy.secagg import messages as m
from server.secure_round import SecureRound, _advance, _carried_replies, _protocol_replies
from tasks.wire import protocol_message, protocol_records


def reply(src: int, message: dict | None = None, error: str = "", refusal: dict | None = None):
    content = RecordDict()
    if message is not None:
        for key, record in protocol_records(message).items():
            content[key] = record
    if refusal is not None:
        content["refusal"] = ConfigRecord(refusal)
    return SimpleNamespace(
        metadata=SimpleNamespace(src_node_id=src),
        content=content,
        has_error=lambda: bool(error),
        error=SimpleNamespace(reason=error),
    )


def test_spoofed_sender_is_rejected_and_the_rest_sorted():
    honest = {m.SENDER: 7, m.STAGE: m.MASKED_INPUT, m.MASKED_VECTOR: np.arange(4, dtype=np.uint64)}
    spoof = {m.SENDER: 7, m.STAGE: m.MASKED_INPUT}
    outcome = SecureRound()
    accepted = _protocol_replies(
        m.MASKED_INPUT,
        [
            reply(7, honest),
            reply(9, spoof),
            reply(11, error="boom"),
            reply(12, refusal={"reason": "budget-exhausted", "site": "s"}),
        ],
        outcome,
    )
    assert [a[m.SENDER] for a in accepted] == [7]
    np.testing.assert_array_equal(accepted[0][m.MASKED_VECTOR], np.arange(4))
    assert len(outcome.updates) == 1
    assert outcome.rejections == [f"{m.MASKED_INPUT}: reply from node 9 claims sender 7"]
    assert outcome.failures == [f"{m.MASKED_INPUT}: node 11: boom"]
    assert outcome.refusals == [{"reason": "budget-exhausted", "site": "s"}]


def test_protocol_records_round_trip():
    message = {m.SENDER: 3, "ids": [1, 2], "blob": b"\x00\x01", m.MASKED_VECTOR: np.ones(3)}
    back = protocol_message(RecordDict(protocol_records(message)))
    assert back[m.SENDER] == 3 and back["ids"] == [1, 2] and back["blob"] == b"\x00\x01"
    np.testing.assert_array_equal(back[m.MASKED_VECTOR], np.ones(3))


def carrying(src: int, carried: dict):
    """A consistency reply from `src` that carries an answer for the next round."""
    answer = reply(src, {m.SENDER: src, m.STAGE: m.CONSISTENCY})
    answer.content[m.NEXT_ROUND] = ConfigRecord(carried)
    return answer


def test_an_answer_for_the_next_round_is_taken_only_from_the_site_it_names():
    outcome = SecureRound()
    carried = _carried_replies(
        m.CONSISTENCY,
        [
            carrying(7, {m.SENDER: 7, "x": 1}),
            carrying(9, {m.SENDER: 7, "x": 2}),  # site 9 answers for site 7
            reply(11, {m.SENDER: 11, m.STAGE: m.CONSISTENCY}),  # answers its own stage only
            reply(12, error="boom"),
        ],
        outcome,
    )
    assert carried == [{m.SENDER: 7, "x": 1}]
    assert outcome.rejections == [
        f"{m.CONSISTENCY} (next round): reply from node 9 claims sender 7"
    ]


def test_the_next_rounds_session_goes_on_only_if_every_site_answered_it():
    config = SecAggConfig(authenticated=False)
    ids = [7, 9, 11]

    def setup_replies(upcoming: SecAggServer) -> list[dict]:
        return [SecAggClient(c).handle(r) for c, r in upcoming.requests().items()]

    everyone = SecAggServer(config, "s/2/early", ids, 8)
    assert _advance(everyone, setup_replies(everyone), SecureRound()) is everyone
    assert everyone.stage == m.SHARE_KEYS

    missing = SecAggServer(config, "s/2/early", ids, 8)
    assert _advance(missing, setup_replies(missing)[:2], SecureRound()) is None

    wrong = SecAggServer(config, "s/2/early", ids, 8)
    answers = setup_replies(wrong)
    answers[2] = {**answers[2], m.NONCE: bytes(m.NONCE_BYTES)}  # answers another request
    outcome = SecureRound()
    assert _advance(wrong, answers, outcome) is None
    assert outcome.rejections == [
        f"{m.SETUP}: {m.SETUP} reply from client 11 answers another request (nonce mismatch)"
    ]
