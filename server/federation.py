"""The round loop: sample sites, train, aggregate, evaluate, record; then save the model.

Flower's strategies decide whom to sample and how to average; this loop owns what FedVault
adds around them: site refusals (a site whose budget ran out declines and the run carries on),
the run's privacy ledger, server-side evaluation on the task's held-out test set, and the run
directory with its status marker.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import getLogger

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from privacy.errors import FedVaultError
from privacy.ledger import Ledger
from server.rundir import RunDirectory
from server.secure_round import secure_train_round
from server.strategies import make_strategy
from tasks.evaluation import evaluate
from tasks.registry import build_model, load_dataset
from tasks.settings import RunSettings

log = getLogger("fedvault.server")
ProgressFn = Callable[[dict], None]


@dataclass
class RoundReplies:
    """A round's replies sorted into usable updates, refusals and failures."""

    ok: list[Message] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def split_replies(replies: list[Message]) -> RoundReplies:
    out = RoundReplies()
    for reply in replies:
        if reply.has_error():
            out.failures.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
        elif "refusal" in reply.content:
            out.refusals.append(dict(reply.content["refusal"]))
        else:
            out.ok.append(reply)
    return out


def run_federation(grid: Grid, settings: RunSettings, progress: ProgressFn | None = None) -> dict:
    """Run every round of one federated training run; return the final round's metrics."""
    rundir = RunDirectory(settings.out)
    rundir.start(settings.to_config())
    ledger = Ledger.open(rundir.path / "run-ledger.sqlite", kind="run")
    try:
        final = _rounds(grid, settings, rundir, ledger, progress)
    except BaseException as exc:
        rundir.set_status("failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        ledger.close()
    rundir.set_status("completed", rounds=settings.num_rounds)
    return final


def _rounds(
    grid: Grid,
    settings: RunSettings,
    rundir: RunDirectory,
    ledger: Ledger,
    progress: ProgressFn | None,
) -> dict:
    dataset = load_dataset(settings.task)
    torch.manual_seed(settings.task.seed)
    model = build_model(settings.task.name, dataset.num_features, dataset.num_classes)
    arrays = ArrayRecord(model.state_dict())
    strategy = make_strategy(settings)
    train_config = ConfigRecord(settings.to_config())
    session = secrets.token_hex(8)
    loss, accuracy = evaluate(model, dataset.x_test, dataset.y_test)
    metrics: dict = {"round": 0, "test-loss": loss, "test-accuracy": accuracy}
    rundir.add_round(metrics)
    for server_round in range(1, settings.num_rounds + 1):
        started = time.monotonic()
        messages = list(strategy.configure_train(server_round, arrays, train_config, grid))
        if settings.secagg:
            replies, aggregate, secure = _secure_round(
                grid, messages, arrays, train_config, settings, f"{session}/{server_round}"
            )
            ledger.append("secagg_round", {"round": server_round, **secure})
        else:
            replies = split_replies(
                list(grid.send_and_receive(messages, timeout=settings.round_timeout))
            )
            aggregate, secure = replies.ok, {}
        _record_privacy(ledger, server_round, replies)
        _check_round(server_round, replies, secure)
        metrics = {
            "round": server_round,
            "sites-trained": len(replies.ok),
            "sites-refused": len(replies.refusals),
            "sites-failed": len(replies.failures),
        }
        if secure:
            metrics["secagg-aborted"] = int(bool(secure["aborted"]))
            metrics["secagg-out-of-range"] = secure["out-of-range"]
        if aggregate:
            new_arrays, _ = strategy.aggregate_train(server_round, aggregate)
            if new_arrays is not None:
                arrays = new_arrays
        if replies.ok:
            contents = [reply.content for reply in replies.ok]
            train_metrics = strategy.train_metrics_aggr_fn(contents, strategy.weighted_by_key)
            metrics.update(_prefixed("train", train_metrics))
        metrics.update(_evaluate_at_sites(grid, strategy, server_round, arrays, train_config))
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, dataset.x_test, dataset.y_test)
        metrics.update({"test-loss": loss, "test-accuracy": accuracy})
        metrics["seconds"] = round(time.monotonic() - started, 3)
        rundir.add_round(metrics)
        if progress:
            progress(metrics)
    rundir.save_model(model.state_dict())
    return metrics


def _secure_round(
    grid: Grid,
    messages: list[Message],
    arrays: ArrayRecord,
    train_config: ConfigRecord,
    settings: RunSettings,
    session: str,
) -> tuple[RoundReplies, list[Message], dict]:
    """Train the sampled sites under SecAgg+; the aggregate is one pre-averaged reply."""
    node_ids = [msg.metadata.dst_node_id for msg in messages]
    outcome = secure_train_round(
        grid, node_ids, arrays, train_config, settings.secagg_config(), session
    )
    replies = RoundReplies(outcome.updates, outcome.refusals, outcome.failures)
    if outcome.aborted:
        log.error("round aborted: secure aggregation failed: %s", outcome.aborted)
    record = {
        "session": session,
        "sampled": len(node_ids),
        "contributors": outcome.contributors,
        "dropped": {str(k): v for k, v in outcome.dropped.items()},
        "rejections": outcome.rejections,
        "aborted": outcome.aborted,
        "out-of-range": outcome.out_of_range,
    }
    if outcome.out_of_range:
        log.warning(
            "%d update values fell outside the secure-aggregation range +-%g and were clipped",
            outcome.out_of_range,
            settings.secagg_clip_range,
        )
    return replies, [outcome.aggregate] if outcome.aggregate else [], record


def _check_round(server_round: int, replies: RoundReplies, secure: dict) -> None:
    """Fail loudly when every site failed: that is a bug or an outage, not a dropout."""
    for failure in replies.failures:
        log.warning("round %s: %s", server_round, failure)
    if replies.ok or replies.refusals or (secure and secure["sampled"] > len(replies.failures)):
        return
    raise FedVaultError(
        f"round {server_round}: no site returned an update"
        + (f" ({replies.failures[0]})" if replies.failures else "")
    )


def _evaluate_at_sites(
    grid: Grid, strategy: object, server_round: int, arrays: ArrayRecord, config: ConfigRecord
) -> dict:
    replies = split_replies(
        list(
            grid.send_and_receive(
                strategy.configure_evaluate(server_round, arrays, config, grid),
                timeout=float(config["round-timeout"]),
            )
        )
    )
    if not replies.ok:
        return {}
    return _prefixed("client", strategy.aggregate_evaluate(server_round, replies.ok))


def _record_privacy(ledger: Ledger, server_round: int, replies: RoundReplies) -> None:
    """Append each site's privacy summary, first anonymization report, and refusals."""
    anonymized = {row.payload["site"] for row in ledger.rows("anonymization")}
    for reply in replies.ok:
        privacy = reply.content.get("privacy")
        if privacy is None:
            continue
        site = str(privacy["site"])
        if "summary" in privacy:
            summary = json.loads(str(privacy["summary"]))
            ledger.append("site_round", {**summary, "round": server_round})
        if "anonymization" in privacy and site not in anonymized:
            report = json.loads(str(privacy["anonymization"]))
            ledger.append("anonymization", {"site": site, "round": server_round, **report})
    for refusal in replies.refusals:
        ledger.append("refusal", {**refusal, "round": server_round})


def _prefixed(prefix: str, record: object) -> dict:
    if record is None:
        return {}
    return {f"{prefix}-{k}" if not k.startswith(prefix) else k: v for k, v in dict(record).items()}
