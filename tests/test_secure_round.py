"""The server's handling of secure-aggregation replies, without the engine."""

from types import SimpleNamespace

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from privacy.secagg import messages as m
from server.secure_round import SecureRound, _protocol_replies
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
