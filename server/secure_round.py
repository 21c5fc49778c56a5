"""One training round under secure aggregation (SecAgg+), driven over Flower messages.

The protocol maths is in privacy/secagg; this module only carries its stages as
`train.secagg` messages, one exchange (server/exchange.py) per stage, and times each. The
round's training instruction (global model and settings) rides on the masked-input stage,
so a site trains only once it holds its peers' shares. The server learns the weighted sum
of the vectors of the sites whose masked input arrived, and nothing about any one of them.
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
from tasks.wire import protocol_message, protocol_records

log = getLogger("fedvault.server")

SECAGG_MESSAGE_TYPE = "train.secagg"
StageFn = Callable[[str, int, int, float], None]


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
    stage_seconds: dict[str, float] = field(default_factory=dict)


def secure_train_round(
    grid: Grid,
    node_ids: list[int],
    arrays: ArrayRecord,
    train_config: ConfigRecord,
    config: SecAggConfig,
    session: str,
    vector_length: int,
    on_stage: StageFn | None = None,
) -> SecureRound:
    """Run the stages; only the weighted sum of the sites' vectors comes back.

    `on_stage(stage, answered, asked, seconds)` is told when each exchange ends.
    """
    server = SecAggServer(config, session, node_ids, vector_length)
    outcome = SecureRound()
    try:
        while not server.done:
            stage = server.stage
            messages = [
                Message(
                    content=_request_content(stage, request, arrays, train_config),
                    dst_node_id=node_id,
                    message_type=SECAGG_MESSAGE_TYPE,
                )
                for node_id, request in server.requests().items()
            ]
            started = time.monotonic()
            replies = exchange(grid, messages, config.stage_timeout_s)
            outcome.stage_seconds[stage] = round(time.monotonic() - started, 3)
            if on_stage is not None:
                on_stage(stage, len(replies), len(messages), outcome.stage_seconds[stage])
            server.receive(_protocol_replies(stage, replies, outcome))
        result = server.result()
    except SecAggAbort as exc:
        outcome.aborted = exc.reason
    finally:
        outcome.dropped = dict(server.dropped)
        outcome.rejections.extend(server.rejections)
    if outcome.aborted:
        return outcome
    outcome.weighted_sum = result.weighted_sum
    outcome.total_weight = int(result.total_weight)
    outcome.out_of_range = result.out_of_range
    outcome.contributors = result.num_clients
    return outcome


def _request_content(
    stage: str, request: dict, arrays: ArrayRecord, train_config: ConfigRecord
) -> RecordDict:
    content = RecordDict({**protocol_records(request), "config": train_config})
    if stage == m.MASKED_INPUT:
        content["arrays"] = arrays
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
        message = protocol_message(reply.content)
        if message.get(m.SENDER) != sender:
            reason = f"{stage}: reply from node {sender} claims sender {message.get(m.SENDER)}"
            outcome.rejections.append(reason)
            log.warning("secure aggregation: rejected a reply: %s", reason)
            continue
        accepted.append(message)
        if stage == m.MASKED_INPUT:
            outcome.updates.append(reply)
    return accepted
