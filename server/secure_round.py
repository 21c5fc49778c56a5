"""Secure aggregation over Flower messages: single rounds (SecAgg+) and multi-step sessions.

The protocol maths is in privacy/secagg; this module only carries its stages as
`train.secagg` messages, one exchange (server/exchange.py) per stage, and times each. The
round's training instruction (global model and settings) rides on the masked-input stage
(on the step, in a session), so a site trains only once it holds its peers' keys. The server
learns the weighted sum of the vectors of the sites whose masked input arrived, and nothing
about any one of them.

Rounds (`SecureRounds`) agree the next round's keys in their last two exchanges, so a
round after the first starts at masked input when it asks the same sites.

Distributed DP-SGD takes one secure sum per step, hundreds per run, so it runs sessions
(`SecureSteps`): the sites agree keys once (setup and share-keys), then each step is a single
exchange. Every member must answer every step, or the step's masks cannot be removed and
nothing is released; the next step then starts a new session without the sites that did
not answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import getLogger

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from privacy.secagg import SecAggAbort, SecAggConfig, SecAggServer
from privacy.secagg import messages as m
from server.exchange import exchange
from tasks.wire import pack_model, protocol_message, protocol_records

log = getLogger("fedvault.server")

SECAGG_MESSAGE_TYPE = "train.secagg"
StageFn = Callable[[str, int, int, float], None]
_CARRIES_MODEL = (m.MASKED_INPUT, m.STEP)
KEY_AGREEMENT_TRIES = 3


@dataclass
class SecureRound:
    """What one secure round produced: the aggregate (unless aborted) and what went wrong."""

    weighted_sum: np.ndarray | None = None
    total_weight: int = 0
    updates: list[Message] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)
    rejections: list[str] = field(default_factory=list)
    aborted: str = ""
    out_of_range: int = 0
    contributors: int = 0
    threshold: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    session: str = ""


class SecureRounds:
    """Single SecAgg+ rounds, each round's keys agreed in the round before.

    A round's setup and share-keys are two exchanges before any site trains. When the next
    round asks the same sites, this round carries them (`m.NEXT_ROUND`): the stage before
    unmask carries the next round's setup requests, and unmask its share-keys requests.
    Each site answers both requests of the exchange; the next round then starts at masked
    input. A site checks a carried request as it checks one sent alone, and may leave it
    unanswered. If the next round asks other sites, or any site of it did not answer a
    carried request (a dropout, a refusal), or answered it wrongly, the next round runs a
    setup of its own.
    """

    def __init__(self, config: SecAggConfig, vector_length: int, prefix: str) -> None:
        self.config = config
        self.vector_length = vector_length
        self.prefix = prefix
        self._next: SecAggServer | None = None  # the next round's session, at masked input

    def train(
        self,
        grid: Grid,
        node_ids: list[int],
        arrays: ArrayRecord,
        train_config: ConfigRecord,
        server_round: int,
        ask_next: bool,
        on_stage: StageFn | None = None,
    ) -> SecureRound:
        """Run round `server_round`; only the weighted sum of the sites' vectors comes back.

        `ask_next`: a next round follows and should ask the same sites (no sampling), so its
        keys are agreed in this round's last exchanges. `on_stage(stage, answered, asked,
        seconds)` is told when each exchange ends."""
        prepared, self._next = self._next, None
        if prepared is not None and list(prepared.members) != sorted(node_ids):
            prepared = None
        server = (
            prepared
            if prepared is not None
            else SecAggServer(
                self.config, f"{self.prefix}/{server_round}", node_ids, self.vector_length
            )
        )
        upcoming = None
        if ask_next:
            upcoming = SecAggServer(
                self.config,
                f"{self.prefix}/{server_round + 1}/early",
                node_ids,
                self.vector_length,
            )
        carry_setup_at = server.stages[-2]
        known = len(server.rejections)  # a prepared session's were the round before's
        outcome = SecureRound(threshold=server.params.threshold, session=server.session)
        try:
            while not server.done:
                attach = None
                if upcoming is not None and (server.stage, upcoming.stage) in (
                    (carry_setup_at, m.SETUP),
                    (m.UNMASK, m.SHARE_KEYS),
                ):
                    attach = upcoming.requests()
                carried = _exchange_stage(
                    grid, server, arrays, train_config, outcome, on_stage, attach
                )
                if attach is not None:
                    upcoming = _advance(upcoming, carried, outcome)
            _take_result(server, outcome)
        except SecAggAbort as exc:
            outcome.aborted = exc.reason
        finally:
            outcome.dropped = dict(server.dropped)
            outcome.rejections.extend(server.rejections[known:])
        if upcoming is not None and upcoming.stage == m.MASKED_INPUT:
            self._next = upcoming
        return outcome


def _advance(
    upcoming: SecAggServer, carried: list[dict], outcome: SecureRound
) -> SecAggServer | None:
    """The next round's session after a carried stage, or None if any site missed it (the
    session drops a site that did not answer, or answered wrongly)."""
    known = len(upcoming.rejections)
    try:
        upcoming.receive(carried)
    except SecAggAbort:
        return None
    finally:
        outcome.rejections.extend(upcoming.rejections[known:])
    return None if upcoming.dropped else upcoming


class SecureSteps:
    """Multi-step sessions of integer vectors (distributed DP-SGD), re-keyed after a dropout.

    A site that does not answer (a refusal, an error, a timeout) or answers wrongly is left out
    of every later session of the run: with it, no step could be unmasked. Sites dropped only
    because another one left are not.
    """

    def __init__(self, config: SecAggConfig, vector_length: int, prefix: str) -> None:
        self.config = config
        self.vector_length = vector_length
        self.prefix = prefix
        self.server: SecAggServer | None = None
        self.left_out: set[int] = set()
        self.sessions = 0

    def step(
        self,
        grid: Grid,
        node_ids: list[int],
        arrays: ArrayRecord,
        train_config: ConfigRecord,
        index: int,
        on_stage: StageFn | None = None,
    ) -> SecureRound:
        """One step `index`: a new session first if none is open for these sites.

        A key agreement that fails leaves out the sites that did not answer and is tried
        again at once; a failed step is not retried (the sites that answered have spent).
        """
        outcome = SecureRound()
        for _ in range(KEY_AGREEMENT_TRIES):
            wanted = sorted(set(node_ids) - self.left_out)
            if self.server is not None and list(self.server.members) == wanted:
                break
            self.server = None
            if len(wanted) < 2:
                outcome.aborted = f"{len(wanted)} site(s) left; a session needs 2"
                return outcome
            try:
                self.server = self._agree_keys(
                    grid, wanted, arrays, train_config, outcome, on_stage
                )
            except SecAggAbort as exc:
                outcome.aborted = exc.reason
        if self.server is None:
            return outcome
        server = self.server
        outcome.aborted = ""
        outcome.threshold = server.params.threshold
        try:
            server.open_step(index)
            _exchange_stage(grid, server, arrays, train_config, outcome, on_stage)
            _take_result(server, outcome)
        except SecAggAbort as exc:
            outcome.aborted = exc.reason
            self.server = None
            self.left_out |= server.faulty
        finally:
            _note_problems(server, outcome)
        return outcome

    def _agree_keys(
        self,
        grid: Grid,
        sites: list[int],
        arrays: ArrayRecord,
        train_config: ConfigRecord,
        outcome: SecureRound,
        on_stage: StageFn | None,
    ) -> SecAggServer:
        self.sessions += 1
        server = SecAggServer(
            self.config,
            f"{self.prefix}/session-{self.sessions}",
            sites,
            self.vector_length,
            integer_input=True,
            multi_step=True,
        )
        try:
            while server.stage != m.STEP:
                _exchange_stage(grid, server, arrays, train_config, outcome, on_stage)
        except SecAggAbort:
            self.left_out |= server.faulty
            raise
        finally:
            _note_problems(server, outcome)
        return server


def _note_problems(server: SecAggServer, outcome: SecureRound) -> None:
    outcome.dropped.update(server.dropped)
    outcome.rejections.extend(r for r in server.rejections if r not in outcome.rejections)


def _exchange_stage(
    grid: Grid,
    server: SecAggServer,
    arrays: ArrayRecord,
    train_config: ConfigRecord,
    outcome: SecureRound,
    on_stage: StageFn | None,
    attach: dict[int, dict] | None = None,
) -> list[dict]:
    """Send the current stage's requests, wait for the replies, hand them to the server.

    `attach`: the next round's request for each site, carried with this stage's; returns
    the replies to them that came back with this stage's replies.
    """
    stage = server.stage
    model = pack_model(arrays) if stage in _CARRIES_MODEL else None
    messages = []
    for node_id, request in server.requests().items():
        content = _request_content(request, model, train_config)
        if attach is not None and node_id in attach:
            content[m.NEXT_ROUND] = ConfigRecord(attach[node_id])
        messages.append(
            Message(content=content, dst_node_id=node_id, message_type=SECAGG_MESSAGE_TYPE)
        )
    started = time.monotonic()
    replies = exchange(grid, messages, server.config.stage_timeout_s)
    outcome.stage_seconds[stage] = round(
        outcome.stage_seconds.get(stage, 0.0) + time.monotonic() - started, 3
    )
    if on_stage is not None:
        on_stage(stage, len(replies), len(messages), outcome.stage_seconds[stage])
    server.receive(_protocol_replies(stage, replies, outcome))
    if attach is None:
        return []
    return _carried_replies(stage, replies, outcome)


def _take_result(server: SecAggServer, outcome: SecureRound) -> None:
    result = server.result()
    outcome.weighted_sum = result.weighted_sum
    outcome.total_weight = int(result.total_weight)
    outcome.out_of_range = result.out_of_range
    outcome.contributors = result.num_clients


def _request_content(
    request: dict, model: ArrayRecord | None, train_config: ConfigRecord
) -> RecordDict:
    content = RecordDict({**protocol_records(request), "config": train_config})
    if model is not None:
        content["arrays"] = model
    return content


def _protocol_replies(stage: str, replies: object, outcome: SecureRound) -> list[dict]:
    """Protocol messages of a stage's replies; refusals, failures and spoofs set aside."""
    accepted = []
    for reply in replies:
        sender = reply.metadata.src_node_id
        if reply.has_error():
            outcome.failures.append(f"{stage}: node {sender}: {reply.error.reason}")
            continue
        if "refusal" in reply.content:
            outcome.refusals.append(dict(reply.content["refusal"]))
            continue
        try:
            message = protocol_message(reply.content)
        except (KeyError, ValueError) as exc:
            outcome.rejections.append(f"{stage}: node {sender}: malformed reply ({exc})")
            continue
        if _from_sender(stage, sender, message, outcome):
            accepted.append(message)
            if stage in _CARRIES_MODEL:
                outcome.updates.append(reply)
    return accepted


def _carried_replies(stage: str, replies: object, outcome: SecureRound) -> list[dict]:
    """The answers to the next round's requests that rode on a stage's replies."""
    carried = []
    for reply in replies:
        if reply.has_error() or m.NEXT_ROUND not in reply.content:
            continue
        message = dict(reply.content[m.NEXT_ROUND])
        if _from_sender(f"{stage} (next round)", reply.metadata.src_node_id, message, outcome):
            carried.append(message)
    return carried


def _from_sender(stage: str, sender: int, message: dict, outcome: SecureRound) -> bool:
    """A reply must name the node it came from: a site cannot answer for another."""
    if message.get(m.SENDER) == sender:
        return True
    reason = f"{stage}: reply from node {sender} claims sender {message.get(m.SENDER)}"
    outcome.rejections.append(reason)
    log.warning("secure aggregation: rejected a reply: %s", reason)
    return False
