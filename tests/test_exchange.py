"""The server's side of the wire: what it sends is sealed, and a reply that does not open is
a failed site, not a crash of the round."""

from __future__ import annotations

from coordinator import message
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from server.exchange import exchange
from server.longpoll import FLEET_SOCKETS_ENV
from tasks.wire import SEALED, seal


class Grid:
    """A grid whose sites answer at once, each as `answers[node]` says."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.pushed: list[Message] = []

    def push_messages(self, messages: list[Message]) -> list[str]:
        self.pushed.extend(messages)
        return [msg.metadata.message_id for msg in messages]

    def pull_messages(self, ids: list[str]) -> list[Message]:
        return [
            self.answers[msg.metadata.dst_node_id](msg)
            for msg in self.pushed
            if msg.metadata.message_id in ids
        ]


def test_requests_go_out_sealed_and_replies_that_do_not_open_are_failures(monkeypatch):
    monkeypatch.delenv(FLEET_SOCKETS_ENV, raising=False)
    answer = RecordDict({"metrics": ConfigRecord({"n": 3})})
    grid = Grid(
        {
            1: lambda msg: Message(seal(answer), reply_to=msg),
            2: lambda msg: Message(answer, reply_to=msg),  # not sealed
            3: lambda msg: Message(Error(2, "the site failed"), reply_to=msg),
        }
    )
    requests = [message("train", {"server-round": 1}, 7, node) for node in (1, 2, 3)]
    replies = {r.metadata.src_node_id: r for r in exchange(grid, requests, timeout=5)}

    for msg in grid.pushed:
        assert list(msg.content.keys()) == [SEALED]
        assert len(get_all_nested_objects(msg)) == 3  # message, content, the one record
    assert dict(replies[1].content["metrics"]) == {"n": 3}
    assert replies[2].has_error() and "malformed reply" in replies[2].error.reason
    assert replies[2].metadata.reply_to_message_id == requests[1].metadata.message_id
    assert replies[3].error.reason == "the site failed"
