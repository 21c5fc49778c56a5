"""The long-poll process beside the proxy: held pulls, mail, and replies announced when whole.

The SuperLink is played by an httpx mock transport that answers Fleet calls the way Flower's
does (protobuf bodies, an empty pull when nothing waits for the node), so each test can
count the requests that reach it. The deployment tests run the real process behind nginx.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from flwr.proto.fleet_pb2 import (
    PullMessagesRequest,
    PullMessagesResponse,
    PushMessagesRequest,
    PushMessagesResponse,
)
from flwr.proto.message_pb2 import PushObjectRequest, PushObjectResponse

from server.longpoll import (
    FLEET_SOCKETS_ENV,
    MAIL,
    PULL_PATH,
    PUSH_MESSAGES_PATH,
    PUSH_OBJECT_PATH,
    FleetFront,
    Mail,
    ReplyWatch,
    announce,
)

NODE = 7


class FakeSuperLink:
    """Fleet answers as Flower's SuperLink gives them; every request it sees is recorded."""

    def __init__(self) -> None:
        self.queued: dict[int, int] = {}
        self.seen: list[str] = []
        self.status = 200
        self.on_push_messages = lambda: None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.url.path)
        if self.status != 200:
            return httpx.Response(self.status, content=b"refused")
        if request.url.path == PULL_PATH:
            node = PullMessagesRequest.FromString(request.content).node.node_id
            answer = PullMessagesResponse()
            if self.queued.get(node):
                self.queued[node] -= 1
                answer.messages_list.add()
            return httpx.Response(200, content=answer.SerializeToString())
        if request.url.path == PUSH_MESSAGES_PATH:
            self.on_push_messages()
            answer = PushMessagesResponse(session_id="s1", objects_to_push=["o1", "o2"])
            return httpx.Response(200, content=answer.SerializeToString())
        return httpx.Response(200, content=PushObjectResponse(stored=True).SerializeToString())

    def pulls(self) -> int:
        return self.seen.count(PULL_PATH)


def front_for(link: FakeSuperLink, folder: Path, **timing: float) -> FleetFront:
    front = FleetFront("superlink:9444", folder / "ca.crt", folder, **timing)
    front.client = httpx.AsyncClient(
        transport=httpx.MockTransport(link), base_url="https://superlink:9444"
    )
    return front


def pull_body(node: int = NODE) -> bytes:
    request = PullMessagesRequest()
    request.node.node_id = node
    return request.SerializeToString()


async def call(front: FleetFront, path: str, body: bytes, hang_up_after: float | None = None):
    """One request through the ASGI app: its status and body, or None if none was sent."""
    sent: list[dict] = []
    events = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if events:
            return events.pop(0)
        if hang_up_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(hang_up_after)
        return {"type": "http.disconnect"}

    async def send(event: dict) -> None:
        sent.append(event)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"x-sig", b"node")]}
    await front(scope, receive, send)
    if not sent:
        return None
    return sent[0]["status"], sent[1]["body"]


def test_an_empty_pull_is_held_until_the_server_announces_mail(tmp_path):
    link = FakeSuperLink()
    front = front_for(link, tmp_path, hold_s=10.0, repull_s=5.0)

    async def scenario():
        pull = asyncio.ensure_future(call(front, PULL_PATH, pull_body()))
        await asyncio.sleep(0.3)
        assert not pull.done()  # held: Flower's SuperNode would be asleep for 3 s
        link.queued[NODE] = 1
        front.wake([NODE + 1])  # mail for another site wakes nobody here
        await asyncio.sleep(0.1)
        assert not pull.done()
        woken = time.monotonic()
        front.wake([NODE])
        status, body = await pull
        return status, body, time.monotonic() - woken

    status, body, delay = asyncio.run(scenario())
    assert status == 200 and PullMessagesResponse.FromString(body).messages_list
    assert delay < 0.2
    assert link.pulls() == 2  # the first, empty; the repeat the mail asked for


def test_without_mail_the_pull_repeats_at_flowers_pace_and_ends_empty(tmp_path):
    link = FakeSuperLink()
    front = front_for(link, tmp_path, hold_s=1.0, repull_s=0.3)
    started = time.monotonic()
    status, body = asyncio.run(call(front, PULL_PATH, pull_body()))
    assert status == 200 and not PullMessagesResponse.FromString(body).messages_list
    assert 1.0 <= time.monotonic() - started < 2.0
    assert 3 <= link.pulls() <= 5  # at the repull pace, not a busy loop


def test_anything_but_an_empty_answer_goes_back_at_once(tmp_path):
    link = FakeSuperLink()
    link.status = 401  # the SuperLink refused the site's signature
    front = front_for(link, tmp_path, hold_s=10.0, repull_s=5.0)
    started = time.monotonic()
    assert asyncio.run(call(front, PULL_PATH, pull_body())) == (401, b"refused")
    assert time.monotonic() - started < 1.0 and link.pulls() == 1


def test_a_site_that_hung_up_is_not_pulled_for_again(tmp_path):
    """A message pulled for a site that is gone would be lost: the hold ends instead."""
    link = FakeSuperLink()
    front = front_for(link, tmp_path, hold_s=10.0, repull_s=5.0)

    async def scenario():
        pull = asyncio.ensure_future(call(front, PULL_PATH, pull_body(), hang_up_after=0.2))
        await asyncio.sleep(0.5)
        link.queued[NODE] = 1
        front.wake([NODE])
        return await pull

    assert asyncio.run(scenario()) is None
    assert link.pulls() == 1 and link.queued[NODE] == 1


def test_replies_are_announced_before_they_reach_the_superlink_and_once_whole(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(FLEET_SOCKETS_ENV, str(tmp_path))
    watch = ReplyWatch()
    link = FakeSuperLink()
    front = front_for(link, tmp_path)
    seen_pushing: list[bool] = []
    link.on_push_messages = lambda: seen_pushing.append(
        not watch.news() and "instruction-1" in watch.pushing
    )
    push = PushMessagesRequest()
    push.messages_list.add().metadata.reply_to_message_id = "instruction-1"
    try:
        asyncio.run(call(front, PUSH_MESSAGES_PATH, push.SerializeToString()))
        assert seen_pushing == [True]  # the ServerApp knew before the SuperLink stored it
        assert watch.settled({"instruction-1", "instruction-2"}) == {"instruction-2"}
        first = PushObjectRequest(session_id="s1", object_id="o1").SerializeToString()
        asyncio.run(call(front, PUSH_OBJECT_PATH, first))
        assert watch.wait(0.2) == set()  # o2 is still owed: pulling now would find half
        second = PushObjectRequest(session_id="s1", object_id="o2").SerializeToString()
        asyncio.run(call(front, PUSH_OBJECT_PATH, second))
        assert watch.wait(1.0) == {"instruction-1"}
        assert watch.settled({"instruction-1"}) == {"instruction-1"}
    finally:
        watch.close()
    assert not list(tmp_path.glob("reply-*.sock"))


def test_a_failed_push_leaves_nothing_to_wait_for(tmp_path, monkeypatch):
    monkeypatch.setenv(FLEET_SOCKETS_ENV, str(tmp_path))
    watch = ReplyWatch()
    link = FakeSuperLink()
    link.status = 500
    push = PushMessagesRequest()
    push.messages_list.add().metadata.reply_to_message_id = "instruction-1"
    try:
        status, _ = asyncio.run(
            call(front_for(link, tmp_path), PUSH_MESSAGES_PATH, push.SerializeToString())
        )
        assert status == 500
        assert watch.wait(1.0) == {"instruction-1"}  # whatever is there may be pulled now
    finally:
        watch.close()


def test_mail_reaches_the_long_poll_process_and_wakes_the_named_sites(tmp_path, monkeypatch):
    monkeypatch.setenv(FLEET_SOCKETS_ENV, str(tmp_path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as mail:
        mail.bind(str(tmp_path / MAIL))
        announce([3, 1, 3])
        data = mail.recv(1 << 16)
    assert json.loads(data) == [1, 3]
    woken: list[int] = []
    front = FleetFront("superlink:1", tmp_path / "ca.crt", tmp_path)
    front.wake = lambda ids: woken.extend(ids)  # type: ignore[method-assign]
    listener = Mail(front)
    for datagram in (data, b"not json", b'{"a": 1}', b'[true, "2", 4]'):
        listener.datagram_received(datagram, None)
    assert woken == [1, 3, 4]


def test_without_a_long_poll_process_there_is_nothing_to_hear(monkeypatch):
    monkeypatch.delenv(FLEET_SOCKETS_ENV, raising=False)
    watch = ReplyWatch()
    announce([1, 2])  # nowhere to go: no error
    started = time.monotonic()
    assert not watch.listening and watch.wait(0.1) == set()
    assert time.monotonic() - started >= 0.1
    assert watch.settled({"a"}) == {"a"}


@pytest.mark.parametrize("path", ["/v1/fleet/pull-object", "/v1/control/start-run"])
def test_only_the_three_fleet_calls_are_served(tmp_path, path):
    link = FakeSuperLink()
    assert asyncio.run(call(front_for(link, tmp_path), path, b""))[0] == 404
    assert link.seen == []
