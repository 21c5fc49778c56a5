"""The round loop: sample sites, train, aggregate, evaluate, record; then save the model.

Flower's strategies decide whom to sample and how to average; this loop owns what FedVault
adds around them: site refusals (a site whose budget ran out declines and the run carries on),
the run's privacy ledger, server-side evaluation on the task's held-out test set, and the run
directory with its status marker.
"""

from __future__ import annotations

import json
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
    loss, accuracy = evaluate(model, dataset.x_test, dataset.y_test)
    metrics: dict = {"round": 0, "test-loss": loss, "test-accuracy": accuracy}
    rundir.add_round(metrics)
    for server_round in range(1, settings.num_rounds + 1):
        started = time.monotonic()
        replies = split_replies(
            list(
                grid.send_and_receive(
                    strategy.configure_train(server_round, arrays, train_config, grid),
                    timeout=settings.round_timeout,
                )
            )
        )
        _record_privacy(ledger, server_round, replies)
        metrics = {"round": server_round, "sites-trained": len(replies.ok)}
        metrics["sites-refused"] = len(replies.refusals)
        metrics["sites-failed"] = len(replies.failures)
        if replies.ok:
            new_arrays, train_metrics = strategy.aggregate_train(server_round, replies.ok)
            if new_arrays is not None:
                arrays = new_arrays
            metrics.update(_prefixed("train", train_metrics))
        for failure in replies.failures:
            log.warning("round %s: %s", server_round, failure)
        if not replies.ok and not replies.refusals:
            raise FedVaultError(
                f"round {server_round}: no site returned an update"
                + (f" ({replies.failures[0]})" if replies.failures else "")
            )
        eval_replies = split_replies(
            list(
                grid.send_and_receive(
                    strategy.configure_evaluate(server_round, arrays, train_config, grid),
                    timeout=settings.round_timeout,
                )
            )
        )
        if eval_replies.ok:
            metrics.update(
                _prefixed("client", strategy.aggregate_evaluate(server_round, eval_replies.ok))
            )
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, dataset.x_test, dataset.y_test)
        metrics.update({"test-loss": loss, "test-accuracy": accuracy})
        metrics["seconds"] = round(time.monotonic() - started, 3)
        rundir.add_round(metrics)
        if progress:
            progress(metrics)
    rundir.save_model(model.state_dict())
    return metrics


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
