"""A coordinator the sites must not trust: it crafts any Flower Message and calls a real site.

The site is FedVault's own ClientApp (client.app.app), called in this process with a real
Message and Context exactly as Flower's runtime calls it, its state directory on disk. The
coordinator chooses every setting, round number, run id and model; what a test asserts is
what the coordinator gets back and what the site's ledger holds.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomli_w
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.metadata import Metadata

from client.app import app as site_app
from client.site import site_settings
from privacy.secagg import SecAggServer
from simulations.identities import give_identities
from tasks.registry import build_model
from tasks.settings import RunSettings
from tasks.wire import pack_model, seal, unpack_model, unseal

SMALL_TASK = {"task.name": "mnist1d", "task.num-train": 1200, "task.num-test": 300}


@dataclass
class Site:
    """One simulated site (partition `index` of `of`), as the coordinator reaches it."""

    root: Path
    index: int = 0
    of: int = 2
    node_id: int = 11
    state: RecordDict = field(default_factory=RecordDict)

    @property
    def state_dir(self) -> Path:
        return self.root / f"site-{self.index}"

    def configure(self, **settings: object) -> None:
        """Write the site's own site.toml (validated as the runner does)."""
        values = site_settings(
            {k.replace("_", "-"): v for k, v in settings.items()}, "test", simulated=True
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "site.toml").write_text(tomli_w.dumps(values))

    def context(self, run_id: int) -> Context:
        return Context(
            run_id=run_id,
            node_id=self.node_id,
            node_config={"partition-id": self.index, "num-partitions": self.of},
            state=self.state,
            run_config={},
        )

    def ask(self, message: Message, run_id: int) -> Message:
        """Deliver `message` to the site's ClientApp, sealed as the server sends every
        message, as Flower's runtime does; the reply opened, as the server opens it."""
        message.content = seal(message.content)
        reply = site_app(message, self.context(run_id))
        if reply.has_content():
            reply.content = unseal(reply.content)
        return reply

    def ledger_rows(self, kind: str | None = None) -> list[dict]:
        """The site's ledger rows, read with plain sqlite3 (not through FedVault)."""
        paths = list(self.state_dir.glob("ledger-*.sqlite"))
        if not paths:
            return []
        (path,) = paths
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT kind, payload FROM rows ORDER BY seq").fetchall()
        return [{"kind": k, **json.loads(p)} for k, p in rows if kind is None or k == kind]


def run_config(sites_root: Path, **overrides: object) -> dict:
    """A flat run config as the coordinator would send it (every key its choice)."""
    settings = RunSettings.from_config(
        {
            **SMALL_TASK,
            "num-rounds": 3,
            "local-epochs": 1,
            "batch-size": 64,
            "learning-rate": 0.1,
            "dp": True,
            "noise-multiplier": 1.0,
            "secagg": False,
            "sites-root": str(sites_root),
            **{k: v for k, v in overrides.items() if k not in ("server-round",)},
        }
    )
    return {**settings.to_config(), "server-round": int(overrides.get("server-round", 1))}


def initial_arrays(config: dict, seed: int = 0) -> ArrayRecord:
    """A model for the task, as the server puts it on the wire."""
    settings = RunSettings.from_config({k: v for k, v in config.items() if k != "server-round"})
    torch.manual_seed(seed)
    return pack_model(build_model(settings.task.name, 40, 10, private=settings.dp).state_dict())


def message(
    kind: str,
    config: dict,
    run_id: int,
    dst: int,
    arrays: ArrayRecord | None = None,
    records: dict | None = None,
) -> Message:
    """A message from the coordinator (node 0) to node `dst`."""
    content = RecordDict({"config": ConfigRecord(config)})
    if arrays is not None:
        content["arrays"] = arrays
    for key, record in (records or {}).items():
        content[key] = record
    metadata = Metadata(
        run_id=run_id,
        message_id=uuid.uuid4().hex,
        src_node_id=0,
        dst_node_id=dst,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=600.0,
        message_type=kind,
    )
    return Message(metadata=metadata, content=content)


def train_request(site: Site, config: dict, run_id: int = 1, arrays=None) -> Message:
    return site.ask(
        message("train", config, run_id, site.node_id, arrays or initial_arrays(config)), run_id
    )


def refusal(reply: Message) -> dict | None:
    """The site's refusal record, or None if it answered."""
    if reply.has_error():
        raise AssertionError(f"the site failed instead of answering: {reply.error.reason}")
    return dict(reply.content["refusal"]) if "refusal" in reply.content else None


def flat_weights(arrays: ArrayRecord) -> np.ndarray:
    state = unpack_model(arrays)
    return np.concatenate([v.double().reshape(-1).numpy() for v in state.values()])


def secure_round(
    sites: list[Site],
    config: dict,
    run_id: int,
    arrays: ArrayRecord,
    session: str = "s/1",
    replay: str | None = None,
    extra_coordinates: int = 0,
    carry: Callable[[str, int, dict], dict] | None = None,
    answers: dict[str, list[Message]] | None = None,
) -> tuple[list[Message], list[Message], SecAggServer]:
    """Drive the SecAgg+ stages at `sites`; return the masked-input replies, the replies
    to a stage's requests sent a second time (if `replay` names one), and the server.
    `extra_coordinates` follow the model delta in the vector (adaptive clipping's count).
    `carry(stage, node, request)` gives records to add to a site's request; each stage's
    replies are put in `answers`, by stage, as soon as they are in."""
    from privacy.secagg import SecAggAbort, SecAggConfig
    from privacy.secagg import messages as m
    from tasks.wire import protocol_message, protocol_records, update_length

    give_identities({f"site-{site.index}": site.state_dir for site in sites})
    by_id = {site.node_id: site for site in sites}
    length = update_length(unpack_model(arrays)) + extra_coordinates
    server = SecAggServer(SecAggConfig(), session, sorted(by_id), length)
    masked, replayed = [], []
    while not server.done:
        stage = server.stage
        outgoing = {}
        for node, request in server.requests().items():
            extra = {"arrays": arrays} if stage == m.MASKED_INPUT else None
            records = protocol_records(request)
            if carry is not None:
                records.update(carry(stage, node, request))
            outgoing[node] = (extra, records)
        replies = []
        for node, (extra, records) in outgoing.items():
            msg = message("train.secagg", config, run_id, node, extra and extra["arrays"], records)
            reply = by_id[node].ask(msg, run_id)
            replies.append(reply)
            if stage == replay:
                again = message(
                    "train.secagg", config, run_id, node, extra and extra["arrays"], records
                )
                replayed.append(by_id[node].ask(again, run_id))
        if stage == m.MASKED_INPUT:
            masked = replies
        if answers is not None:
            answers[stage] = replies
        try:
            server.receive([protocol_message(r.content) for r in replies if "secagg" in r.content])
        except SecAggAbort:
            break
    return masked, replayed, server
