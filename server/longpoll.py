"""Fleet pulls held open until the site has mail, and replies announced as they land.

Flower 1.42's SuperNode asks the SuperLink for its next message and, when there is none,
sleeps a hard-coded 3 s before it asks again (`flwr/supernode/start_client_internal.py`).
A site that has just answered one stage of a secure round asks for the next stage a few
milliseconds before the ServerApp has read every answer and sent it, so every exchange
would wait up to 3 s, whatever its work. On the other side the ServerApp can only poll for
replies: each poll costs the SuperLink a database round (on a deployment the largest single
load on it), and a poll that finds a reply whose parts are still being pushed makes
Flower's object pull back off for a second. This process, beside the Fleet-only proxy
(server/superlink.py), removes both waits without touching Flower. nginx sends it three
Fleet calls, which it forwards to the SuperLink unchanged; its sockets are in one
directory (`FLEET_SOCKETS_ENV`, made by `fedvault server`):

- pulls (`pull-messages`): while the SuperLink's answer is empty it is held back and asked
  again as soon as the ServerApp announces mail for that site (`announce`, on `mail.sock`),
  or every REPULL_S (Flower's own pace) otherwise, for up to HOLD_S; then the empty answer
  goes back and the SuperNode sleeps as it would have. Every repeat is the site's own
  signed request, checked again by the SuperLink; any other answer (a message, an
  authentication failure, an error) goes back at once, and a site that hung up is never
  pulled for again, so no message is taken for a site that is not there to receive it.
- pushes (`push-messages`, `push-object`): a reply is whole once the SuperLink has stored
  every object its push session asked for; then every ServerApp waiting on replies
  (`ReplyWatch`, a `reply-*.sock` of its own) is told, and pulls it.

The datagrams carry node ids or nothing at all: a stray one costs one extra pull. Only
`fleet.sock` is open to nginx's unprivileged workers (what it serves, anyone may send to
the proxy's public port); the other sockets are the owner's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import select
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from logging import getLogger
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when the process starts; the ServerApp's side needs neither
    import httpx

log = getLogger("fedvault.server")

FLEET_SOCKETS_ENV = "FEDVAULT_FLEET_SOCKETS"
"""The long-poll process's socket directory, for the ServerApp (set by `fedvault server`)."""
FLEET = "fleet.sock"
MAIL = "mail.sock"
REPLY_PREFIX = "reply-"
PULL_PATH = "/v1/fleet/pull-messages"
PUSH_MESSAGES_PATH = "/v1/fleet/push-messages"
PUSH_OBJECT_PATH = "/v1/fleet/push-object"
PATHS = (PULL_PATH, PUSH_MESSAGES_PATH, PUSH_OBJECT_PATH)
HOLD_S = 20.0
"""Longest hold of one pull; well under the SuperNode's 30 s request timeout."""
REPULL_S = 3.0
"""Pace of repeats without an announcement: the SuperNode's own idle poll."""
MAX_BODY = 64 << 20
"""As nginx's client_max_body_size (server/superlink.py)."""
SESSION_TTL_S = 600.0
"""A push session not complete after this long is forgotten (its sender died)."""
IDS_PER_DATAGRAM = 500
HOP_BY_HOP = {
    b"host",
    b"connection",
    b"keep-alive",
    b"content-length",
    b"transfer-encoding",
    b"upgrade",
    b"te",
    b"trailer",
    b"proxy-connection",
}

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def announce(node_ids: Iterable[int]) -> None:
    """Tell the long-poll process, if this ServerApp runs behind one, that sites have mail."""
    folder = os.environ.get(FLEET_SOCKETS_ENV)
    ids = sorted({int(node_id) for node_id in node_ids})
    if not folder or not ids:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for start in range(0, len(ids), IDS_PER_DATAGRAM):
            chunk = json.dumps(ids[start : start + IDS_PER_DATAGRAM]).encode()
            try:
                sock.sendto(chunk, os.path.join(folder, MAIL))
            except OSError as exc:  # no long-poll process: the sites poll at Flower's pace
                log.debug("long poll: cannot announce mail: %s", exc)
                return


class ReplyWatch:
    """The ServerApp's ear for replies: which are whole, and which are still being pushed.

    Each datagram names the messages some replies answer: `{"pushing": [...]}` before a
    site's push of them reaches the SuperLink, `{"whole": [...]}` once the SuperLink holds
    all of them (or their push failed: then there is nothing of them to wait for).
    Without a long-poll process (a simulation, a server without the proxy) it only sleeps.
    """

    def __init__(self) -> None:
        folder = os.environ.get(FLEET_SOCKETS_ENV)
        self.sock: socket.socket | None = None
        self.pushing: dict[str, float] = {}
        if folder and os.path.isdir(folder):
            name = f"{REPLY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.sock"
            self.path = os.path.join(folder, name)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(self.path)
            os.chmod(self.path, 0o600)
            self.sock.setblocking(False)

    @property
    def listening(self) -> bool:
        return self.sock is not None

    def wait(self, seconds: float) -> set[str]:
        """Sleep up to `seconds`, or until replies become whole: the messages they answer."""
        if self.sock is None:
            time.sleep(seconds)
            return set()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.sock], [], [], left)[0] and (whole := self.news()):
                return whole
        return set()

    def news(self) -> set[str]:
        """Read what has arrived; the messages whose replies became whole."""
        whole: set[str] = set()
        while self.sock is not None:
            try:
                data = json.loads(self.sock.recv(1 << 16))
            except BlockingIOError:
                break
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            now = time.monotonic()
            self.pushing.update((str(i), now) for i in data.get("pushing", ()))
            for message_id in map(str, data.get("whole", ())):
                self.pushing.pop(message_id, None)
                whole.add(message_id)
        stale = time.monotonic() - SESSION_TTL_S  # a push whose end never came
        self.pushing = {i: since for i, since in self.pushing.items() if since > stale}
        return whole

    def settled(self, message_ids: set[str]) -> set[str]:
        """Those of `message_ids` whose replies are not being pushed (or for too long)."""
        stale = time.monotonic() - SESSION_TTL_S
        return {i for i in message_ids if self.pushing.get(i, stale) <= stale}

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.sock = None


class FleetFront:
    """ASGI app: forward Fleet pulls and pushes to the SuperLink; hold empty pulls back,
    and tell the ServerApps when a reply is complete."""

    def __init__(
        self,
        upstream: str,
        ca_cert: Path,
        folder: Path,
        hold_s: float = HOLD_S,
        repull_s: float = REPULL_S,
    ) -> None:
        self.upstream = upstream
        self.ca_cert = ca_cert
        self.folder = folder
        self.hold_s = hold_s
        self.repull_s = repull_s
        self.client: httpx.AsyncClient | None = None
        self._mail: dict[int, asyncio.Event] = {}
        self._sessions: dict[str, tuple[set[str], list[str], float]] = {}
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)

    def wake(self, node_ids: Iterable[int]) -> None:
        """Repeat the held pulls of these sites now."""
        for node_id in node_ids:
            event = self._mail.pop(node_id, None)
            if event is not None:
                event.set()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] not in PATHS:
            await _answer(send, 404, [], b"")
            return
        body = await _read_body(receive)
        if body is None:
            await _answer(send, 413, [], b"")
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        if scope["path"] == PULL_PATH:
            hung_up = asyncio.ensure_future(_disconnect(receive))
            try:
                answer = await self._hold(_node_id(body), headers, body, hung_up)
            finally:
                hung_up.cancel()
        else:
            answer = await self._push(scope["path"], headers, body)
        if answer is not None:
            await _answer(send, *answer)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        import httpx

        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                context = ssl.create_default_context(cafile=str(self.ca_cert))
                self.client = httpx.AsyncClient(
                    base_url=f"https://{self.upstream}", verify=context, timeout=30.0
                )
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(
        self, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        import httpx

        assert self.client is not None
        try:
            reply = await self.client.post(path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("fleet front: SuperLink unreachable: %s", exc)
            return 502, [], b""
        return reply.status_code, _forwardable(reply.headers.raw), reply.content

    async def _hold(
        self,
        node_id: int | None,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        hung_up: asyncio.Future,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """The SuperLink's answer once it is not an empty pull, or the last empty one when
        the hold is over; None if the site hung up meanwhile."""
        deadline = time.monotonic() + self.hold_s
        while True:
            mail = self._mail.setdefault(node_id, asyncio.Event()) if node_id else None
            answer = await self._forward(PULL_PATH, headers, body)
            status, _, content = answer
            left = deadline - time.monotonic()
            if mail is None or status != 200 or _has_message(content) or left <= 0:
                return answer
            waiting = asyncio.ensure_future(mail.wait())
            await asyncio.wait(
                [waiting, hung_up],
                timeout=min(self.repull_s, left),
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiting.cancel()
            if hung_up.done():
                return None

    async def _push(
        self, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Forward a push; follow each reply's push session until the SuperLink holds all
        the objects it asked for. The ServerApps hear of a reply before the SuperLink
        stores any of it, and again once it is whole (or its push failed)."""
        answering = _answered(body) if path == PUSH_MESSAGES_PATH else []
        if answering:
            self._tell({"pushing": answering})
        answer = await self._forward(path, headers, body)
        status, _, content = answer
        now = time.monotonic()
        if path == PUSH_MESSAGES_PATH:
            session, owed = _push_session(content) if status == 200 else (None, set())
            if session is not None and owed:
                self._sessions[session] = (owed, answering, now)
            elif answering:
                self._tell({"whole": answering})
        elif status == 200:
            session, object_id = _pushed_object(body)
            if session in self._sessions:
                owed, answering, _ = self._sessions[session]
                owed.discard(object_id)
                if not owed:
                    del self._sessions[session]
                    self._tell({"whole": answering})
        for stale in [k for k, (*_, at) in self._sessions.items() if now - at > SESSION_TTL_S]:
            del self._sessions[stale]
        return answer

    def _tell(self, news: dict[str, list[str]]) -> None:
        data = json.dumps(news).encode()
        for watch in self.folder.glob(f"{REPLY_PREFIX}*.sock"):
            try:
                self._out.sendto(data, str(watch))
            except BlockingIOError:  # its queue is full; its fallback poll will find out
                pass
            except OSError:  # a ServerApp that is gone
                with contextlib.suppress(OSError):
                    watch.unlink()


class Mail(asyncio.DatagramProtocol):
    """Announcements from the ServerApp: a JSON list of node ids per datagram."""

    def __init__(self, front: FleetFront) -> None:
        self.front = front

    def datagram_received(self, data: bytes, addr: object) -> None:
        try:
            ids = json.loads(data)
        except ValueError:
            return
        if isinstance(ids, list):
            self.front.wake(i for i in ids if isinstance(i, int) and not isinstance(i, bool))


def _node_id(body: bytes) -> int | None:
    from flwr.proto.fleet_pb2 import PullMessagesRequest
    from google.protobuf.message import DecodeError

    try:
        return int(PullMessagesRequest.FromString(body).node.node_id) or None
    except DecodeError:
        return None


def _has_message(content: bytes) -> bool:
    from flwr.proto.fleet_pb2 import PullMessagesResponse
    from google.protobuf.message import DecodeError

    try:
        return bool(PullMessagesResponse.FromString(content).messages_list)
    except DecodeError:
        return True  # not an empty pull: hand it back as it is


def _push_session(content: bytes) -> tuple[str | None, set[str]]:
    """The session of a push-messages answer, and the objects it asks the sender for."""
    from flwr.proto.fleet_pb2 import PushMessagesResponse
    from google.protobuf.message import DecodeError

    try:
        answer = PushMessagesResponse.FromString(content)
    except DecodeError:
        return None, set()
    return answer.session_id or None, set(answer.objects_to_push)


def _answered(body: bytes) -> list[str]:
    """The messages that the replies of a push-messages request answer."""
    from flwr.proto.fleet_pb2 import PushMessagesRequest
    from google.protobuf.message import DecodeError

    try:
        request = PushMessagesRequest.FromString(body)
    except DecodeError:
        return []
    return [m.metadata.reply_to_message_id for m in request.messages_list]


def _pushed_object(body: bytes) -> tuple[str | None, str]:
    """The session and object id of a push-object request."""
    from flwr.proto.message_pb2 import PushObjectRequest
    from google.protobuf.message import DecodeError

    try:
        request = PushObjectRequest.FromString(body)
    except DecodeError:
        return None, ""
    return request.session_id or None, request.object_id


def _forwardable(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in headers if k.lower() not in HOP_BY_HOP]


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] != "http.request":
            return None
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer(send: Send, status: int, headers: list, body: bytes) -> None:
    length = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + length})
    await send({"type": "http.response.body", "body": body})


def _datagram_socket(path: Path, mode: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    os.chmod(path, mode)
    return sock


async def serve(upstream: str, ca_cert: Path, folder: Path) -> None:
    """Serve the Fleet front on `folder`/fleet.sock and mail on `folder`/mail.sock."""
    import uvicorn

    front = FleetFront(upstream, ca_cert, folder)
    loop = asyncio.get_running_loop()
    mail, _ = await loop.create_datagram_endpoint(
        lambda: Mail(front), sock=_datagram_socket(folder / MAIL, 0o600)
    )
    with contextlib.suppress(FileNotFoundError):
        (folder / FLEET).unlink()
    config = uvicorn.Config(  # uvicorn makes the socket 0666
        front,
        uds=str(folder / FLEET),
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,  # held pulls end at a stop; the sites pull again
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        mail.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the SuperLink's HOST:PORT")
    parser.add_argument("--ca", required=True, type=Path, help="CA of the SuperLink's cert")
    parser.add_argument("--sockets", required=True, type=Path, help="the socket directory")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.upstream, args.ca, args.sockets))


if __name__ == "__main__":
    main()
