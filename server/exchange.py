"""One request-reply exchange with the sites, without Flower's fixed pull sleeps.

`Grid.send_and_receive` sleeps a fixed interval between pulls: 3 s on a deployment's
SuperLink, 0.1 s in simulation. A secure round makes three to five exchanges, so on a
deployment the sleeps alone would cost up to 15 s a round. Here the ServerApp pushes the
messages and pulls replies itself. In simulation it polls at 20 ms, backing off to 50 ms
while nothing arrives, so an exchange ends within 50 ms of its last reply (a distributed
DP-SGD run makes hundreds). On a deployment behind FedVault's proxy it announces each push
to the long-poll process (server/longpoll.py), which hands the message to the site's
waiting pull at once, and pulls when that process says a reply is whole (every
WATCHED_POLL_S at the latest), which spares the SuperLink a database round every few
milliseconds and Flower's object pull its one-second back-off on a half-pushed reply.

Messages go out sealed and replies are opened here (tasks/wire.py), so the rest of the
server reads plain records; a reply that does not open comes back as an error reply, as a
site that failed would.
"""

from __future__ import annotations

import atexit
import functools
import time
from collections.abc import Iterable

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from server.longpoll import ReplyWatch, announce
from tasks.wire import seal, unseal

FIRST_POLL_S = 0.02
MAX_POLL_S = 0.05
WATCHED_POLL_S = 1.0


@functools.cache
def _reply_watch() -> ReplyWatch:
    """This process's ear for landing replies (one per ServerApp process, closed at exit)."""
    watch = ReplyWatch()
    atexit.register(watch.close)
    return watch


def exchange(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """Send `messages`; their replies as they arrive, until all are in or `timeout` passes."""
    batch = list(messages)
    for message in batch:
        message.content = seal(message.content)
    watch = _reply_watch()
    watch.news()  # old news: no reply to these messages can have landed yet
    pushed = list(grid.push_messages(batch))  # None for a message not pushed, [] for none
    sent = {mid: msg for mid, msg in zip(pushed, batch, strict=False) if mid}
    waiting = set(sent)
    announce(message.metadata.dst_node_id for message in batch)
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    pause = FIRST_POLL_S
    due = set() if watch.listening else set(waiting)
    while waiting:
        arrived = list(grid.pull_messages(list(due))) if due else []  # positional: renamed later
        replies.extend(_opened(reply, sent) for reply in arrived)
        waiting.difference_update(reply.metadata.reply_to_message_id for reply in arrived)
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            break
        if watch.listening:  # pull whole replies, or, now and then, any not being pushed
            due = (watch.wait(min(WATCHED_POLL_S, left)) & waiting) or watch.settled(waiting)
        else:
            pause = FIRST_POLL_S if arrived else min(MAX_POLL_S, pause * 2)
            time.sleep(min(pause, left))
            due = set(waiting)
    return replies


def _opened(reply: Message, sent: dict[str, Message]) -> Message:
    """`reply` with its records unsealed, or an error reply if they do not open."""
    if reply.has_error():
        return reply
    try:
        reply.content = unseal(reply.content)
    except ValueError as exc:
        request = sent[reply.metadata.reply_to_message_id]
        return Message(Error(ErrorCode.UNKNOWN, f"malformed reply: {exc}"), reply_to=request)
    return reply
