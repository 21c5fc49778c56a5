"""The round loop: sample sites, train, aggregate, evaluate, record; then save the model.

Flower's strategies decide whom to sample and how to average; this loop owns what FedVault
adds around them: site refusals (a site whose budget ran out declines and the run carries on),
the run's privacy ledger, server-side evaluation on the task's held-out test set, and the run
directory with its status marker.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from privacy.errors import FedVaultError
from privacy.ledger import Ledger
from privacy.report import write_report
from privacy.report.signing import default_signing_key
from server.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_strategy,
    save_checkpoint,
    strategy_state,
)
from server.client_dp import ClientLevelDp, RoundPlan, clip_and_sum
from server.distributed_sgd import DistributedSgd
from server.exchange import exchange
from server.progress import ProgressFn
from server.rundir import RunDirectory
from server.secure_round import SecureRounds, SecureSteps, StageFn
from server.strategies import make_strategy
from server.transport import record_transport
from tasks.evaluation import evaluate
from tasks.registry import build_model, load_dataset
from tasks.settings import RunSettings
from tasks.wire import apply_update, flatten_update, pack_model, unpack_model, update_length

log = getLogger("fedvault.server")


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


AuditFn = Callable[[torch.nn.Module, list[str]], dict | None]


def run_federation(
    grid: Grid,
    settings: RunSettings,
    run_id: str,
    progress: ProgressFn | None = None,
    audit: AuditFn | None = None,
) -> dict:
    """Run (or, with `resume-run-id`, continue) a federated run; return the last metrics.

    The run ends with its signed privacy-budget report; `audit` (simulations only: it needs
    the sites' training rows) adds the empirical membership-inference audit of the model,
    given the names of the sites whose updates reached it.
    """
    rundir = RunDirectory(settings.out)
    resume = None
    if settings.resume_run_id:
        resume = load_checkpoint(rundir.path, settings.resume_run_id)
        rundir.check_resumable(settings.to_config())
        run_id = resume.run_id
    rundir.start(settings.to_config(), run_id=run_id, resumed=resume is not None)
    if settings.roster:
        rundir.keep_roster(Path(settings.roster))
    ledger = Ledger.open(rundir.path / "run-ledger.sqlite", kind="run")
    record_transport(ledger)
    try:
        final, model = _rounds(grid, settings, rundir, ledger, progress, run_id, resume)
    except BaseException as exc:
        rundir.set_status("failed", run_id=run_id, error=str(exc) or type(exc).__name__)
        raise
    finally:
        ledger.close()
    audit_result = audit(model, _trained_sites(rundir.path)) if audit else None
    rundir.set_status("completed", run_id=run_id, rounds=final["round"])
    try:
        write_report(rundir.path, signing_key_path=default_signing_key(), audit=audit_result)
    except BaseException as exc:
        rundir.set_status("failed", run_id=run_id, error=f"report: {exc}")
        raise
    return final


@dataclass
class TrainOutcome:
    """One training round's replies and, unless nothing could be released, the new model."""

    replies: RoundReplies
    state: dict | None
    weight: int = 1
    metrics: dict = field(default_factory=dict)
    vector: np.ndarray | None = None


def _rounds(
    grid: Grid,
    settings: RunSettings,
    rundir: RunDirectory,
    ledger: Ledger,
    progress: ProgressFn | None,
    run_id: str,
    resume: Checkpoint | None,
) -> tuple[dict, torch.nn.Module]:
    dataset = load_dataset(settings.task)
    torch.manual_seed(settings.task.seed)
    model = build_model(
        settings.task.name, dataset.num_features, dataset.num_classes, private=settings.dp
    )
    strategy = make_strategy(settings)
    train_config = ConfigRecord(settings.to_config())
    session = secrets.token_hex(8)
    client_dp = ClientLevelDp(settings) if settings.client_dp else None
    stepper = None
    length = update_length(model.state_dict())
    if settings.distributed_dp:
        stepper = (DistributedSgd(settings), SecureSteps(settings.secagg_config(), length, session))
    # Adaptive clipping adds its count to the vector.
    length += int(settings.client_dp and settings.client_dp_adaptive)
    rounds = SecureRounds(settings.secagg_config(), length, session)
    if resume is None:
        loss, accuracy = evaluate(model, dataset.x_test, dataset.y_test)
        metrics: dict = {"round": 0, "test-loss": loss, "test-accuracy": accuracy}
        rundir.add_round(metrics)
        first_round = 1
    else:
        model.load_state_dict(resume.model)
        restore_strategy(strategy, resume.strategy, stepper and stepper[0])
        rundir.rounds = list(resume.metrics)
        metrics = rundir.rounds[-1]
        first_round = resume.round + 1
        if client_dp is not None:
            client_dp.restore([row.payload for row in ledger.rows("client_dp_round")])
        if resume.round not in {row.payload["round"] for row in ledger.rows("round_complete")}:
            # The server died between the checkpoint and its ledger row: the round is done.
            _record_complete(ledger, metrics)
        ledger.append("resume", {"run-id": run_id, "from-round": resume.round})
        log.warning("resuming run %s after round %d", run_id, resume.round)
    arrays = ArrayRecord(model.state_dict())  # the iterate the sites train at
    if stepper is not None:  # `model` is what the run releases: after a resume, the average
        model.load_state_dict(stepper[0].released(model.state_dict()))
    for server_round in range(first_round, settings.num_rounds + 1):
        started = time.monotonic()
        messages = list(strategy.configure_train(server_round, arrays, train_config, grid))
        plan = None
        if client_dp is not None:
            plan = client_dp.plan(
                sorted(grid.get_node_ids()), [msg.metadata.dst_node_id for msg in messages]
            )
            if client_dp.exceeds_budget(plan):
                _stop_for_client_budget(ledger, client_dp, server_round)
                break
            train_config["round-clip-norm"] = plan.clip_norm
        node_ids = plan.node_ids if plan else [msg.metadata.dst_node_id for msg in messages]

        on_stage = functools.partial(_report_stage, progress, server_round)
        if settings.secagg:
            outcome = _secure_round(
                grid,
                node_ids,
                arrays,
                train_config,
                settings,
                (session, server_round),
                plan,
                on_stage,
                stepper or rounds,
            )
            ledger.append("secagg_round", {"round": server_round, **outcome.metrics})
        else:
            outcome = _plain_round(grid, node_ids, arrays, train_config, settings)
        replies = outcome.replies
        _record_privacy(ledger, server_round, replies)
        _check_round(server_round, len(node_ids), replies, outcome.metrics)
        metrics = {
            "round": server_round,
            "sites-trained": len(replies.ok),
            "sites-refused": len(replies.refusals),
            "sites-failed": len(replies.failures),
        }
        if settings.secagg:
            metrics["secagg-aborted"] = int(bool(outcome.metrics["aborted"]))
            metrics["secagg-out-of-range"] = outcome.metrics["out-of-range"]
        if client_dp is not None and plan is not None:
            outcome.state = _client_dp_release(
                client_dp, plan, arrays, outcome, settings, ledger, server_round
            )
            metrics["client-epsilon"] = _finite_or_none(client_dp.epsilon())
        if outcome.state is not None:
            aggregate = _as_reply(outcome.state, outcome.weight)
            new_arrays, _ = strategy.aggregate_train(server_round, [aggregate])
            if new_arrays is not None:
                arrays = new_arrays
        epsilons = _site_epsilons(replies.ok)
        if epsilons:
            metrics["max-site-epsilon"] = max(epsilons)
        if settings.fraction_evaluate > 0:
            metrics.update(
                _evaluate_at_sites(grid, strategy, server_round, arrays, train_config, ledger)
            )
        iterate = arrays.to_torch_state_dict()
        model.load_state_dict(stepper[0].released(iterate) if stepper else iterate)
        loss, accuracy = evaluate(model, dataset.x_test, dataset.y_test)
        metrics.update({"test-loss": loss, "test-accuracy": accuracy})
        metrics["seconds"] = round(time.monotonic() - started, 3)
        rundir.add_round(metrics)
        save_checkpoint(
            rundir.path,
            Checkpoint(
                run_id,
                server_round,
                iterate,
                rundir.rounds,
                strategy_state(strategy, stepper and stepper[0]),
            ),
        )
        _record_complete(ledger, metrics)
        if progress:
            progress(metrics)
    rundir.save_model(model.state_dict())
    return metrics, model


def _record_complete(ledger: Ledger, metrics: dict) -> None:
    """A round is complete once checkpointed; its ledger row follows the checkpoint."""
    ledger.append(
        "round_complete", {"round": metrics["round"], "test-accuracy": metrics["test-accuracy"]}
    )


def _train_messages(node_ids: list[int], arrays: ArrayRecord, config: ConfigRecord) -> list:
    content = RecordDict({"arrays": pack_model(arrays), "config": config})
    return [Message(content=content, dst_node_id=nid, message_type="train") for nid in node_ids]


def _plain_round(
    grid: Grid,
    node_ids: list[int],
    arrays: ArrayRecord,
    train_config: ConfigRecord,
    settings: RunSettings,
) -> TrainOutcome:
    """Updates in the clear; FedAvg weights them by their number of examples."""
    messages = _train_messages(node_ids, arrays, train_config)
    replies = split_replies(exchange(grid, messages, settings.round_timeout))
    if not replies.ok:
        return TrainOutcome(replies, None)
    states = [unpack_model(reply.content["arrays"]) for reply in replies.ok]
    weights = [_weight(reply) for reply in replies.ok]
    total = sum(weights)
    mean = {
        key: sum(w * state[key].double() for w, state in zip(weights, states, strict=True)) / total
        for key in states[0]
    }
    old = arrays.to_torch_state_dict()
    return TrainOutcome(replies, {k: v.to(old[k].dtype) for k, v in mean.items()}, weight=total)


def _trained_sites(run_dir: Path) -> list[str]:
    """Sites that released a training update in this run, as their summaries name them."""
    with Ledger.open(run_dir / "run-ledger.sqlite", kind="run") as ledger:
        rows = ledger.rows("site_round") + ledger.rows("plain_release")
    return sorted(
        {str(r.payload["site"]) for r in rows if r.payload.get("purpose", "train") == "train"}
    )


def _report_stage(
    progress: ProgressFn | None,
    server_round: int,
    stage: str,
    answered: int,
    asked: int,
    seconds: float,
) -> None:
    if progress:
        event = {"kind": "stage", "round": server_round, "stage": stage}
        progress({**event, "answered": answered, "asked": asked, "seconds": seconds})


def _weight(reply: Message) -> int:
    """A site's FedAvg weight: its record count where it declared it public, else 1."""
    metrics = reply.content.get("metrics")
    if metrics is None or "num-examples" not in metrics:
        return 1
    return max(1, int(metrics["num-examples"]))


def _secure_round(
    grid: Grid,
    node_ids: list[int],
    arrays: ArrayRecord,
    train_config: ConfigRecord,
    settings: RunSettings,
    session_round: tuple[str, int],
    plan: RoundPlan | None,
    on_stage: StageFn,
    engine: SecureRounds | tuple[DistributedSgd, SecureSteps],
) -> TrainOutcome:
    """Train the sampled sites under SecAgg+; only the sum of their vectors comes back.

    With a stepper (distributed DP-SGD, `engine` a pair) the vectors are the sites' noisy
    gradient sums, summed in a multi-step session, and the new model is one optimizer step
    on their total.
    """
    state = arrays.to_torch_state_dict()
    stepper = engine if isinstance(engine, tuple) else None
    prefix, server_round = session_round
    session = f"{prefix}/{server_round}"
    if len(node_ids) < 2:
        reason = f"{len(node_ids)} site(s) sampled; secure aggregation needs at least 2"
        log.warning("round skipped: %s", reason)
        record = {
            "session": session,
            "sampled": len(node_ids),
            "contributors": 0,
            "dropped": {},
            "rejections": [],
            "aborted": reason,
            "out-of-range": 0,
        }
        return TrainOutcome(RoundReplies(), None, metrics=record)
    if stepper is not None:
        outcome = stepper[1].step(grid, node_ids, arrays, train_config, server_round, on_stage)
    else:
        # The next round asks the same sites unless a sample picks them.
        ask_next = (
            server_round < settings.num_rounds
            and settings.fraction_train == 1.0
            and not (settings.client_dp and settings.client_sampling == "poisson")
        )
        outcome = engine.train(
            grid, node_ids, arrays, train_config, server_round, ask_next, on_stage
        )
    replies = RoundReplies(outcome.updates, outcome.refusals, outcome.failures)
    if outcome.aborted:
        log.error("round aborted: secure aggregation failed: %s", outcome.aborted)
    if outcome.out_of_range:
        log.warning(
            "%d update values fell outside the secure-aggregation range +-%g and were clipped",
            outcome.out_of_range,
            settings.secagg_clip_range,
        )
    record = {
        "session": outcome.session or session,
        "sampled": len(node_ids),
        "contributors": outcome.contributors,
        "dropped": {str(k): v for k, v in outcome.dropped.items()},
        "rejections": outcome.rejections,
        "aborted": outcome.aborted,
        "out-of-range": outcome.out_of_range,
        "stage-seconds": outcome.stage_seconds,
    }
    result = TrainOutcome(replies, None, metrics=record)
    if outcome.weighted_sum is None:
        return result
    result.vector = outcome.weighted_sum
    result.weight = outcome.total_weight
    if stepper is not None:
        result.state = stepper[0].step(
            state, outcome.weighted_sum, outcome.contributors, outcome.threshold
        )
    elif plan is None:
        result.state = apply_update(state, outcome.weighted_sum / outcome.total_weight)
    return result


def _client_dp_release(
    client_dp: ClientLevelDp,
    plan: RoundPlan,
    arrays: ArrayRecord,
    outcome: TrainOutcome,
    settings: RunSettings,
    ledger: Ledger,
    server_round: int,
) -> dict:
    """Clip (if the server saw the updates), noise the sum, record the event; new weights."""
    state = arrays.to_torch_state_dict()
    length = update_length(state)
    if settings.secagg:
        summed = outcome.vector
        if summed is None:
            summed = np.zeros(length + int(settings.client_dp_adaptive))
        clipped_sum, fitted = summed[:length], float(summed[length:].sum())
        reporting = outcome.metrics["contributors"]
    else:
        deltas = [
            flatten_update(unpack_model(reply.content["arrays"]), state)
            for reply in outcome.replies.ok
        ]
        clipped_sum, fitted = clip_and_sum(deltas, plan.clip_norm, length)
        reporting = len(deltas)
    mean = client_dp.release(plan, clipped_sum, fitted, reporting)
    ledger.append(
        "client_dp_round",
        {
            "round": server_round,
            "event": plan.event.to_dict(),
            "epsilon": _finite_or_none(client_dp.epsilon()),
            "accountant": settings.client_accountant,
            "delta": settings.client_delta,
            "max-epsilon": settings.client_max_epsilon,
            "noise-mode": settings.client_dp_noise_mode,
            "update-noise-multiplier": client_dp.update_noise_multiplier,
            "quantile-budget-share": plan.event.quantile_budget_share,
            "expected-sites": plan.expected_sites,
            "reporting-sites": reporting,
            "fitted-sites": fitted,
            "next-clip-norm": client_dp.clip_norm,
        },
    )
    return apply_update(state, mean)


def _stop_for_client_budget(ledger: Ledger, client_dp: ClientLevelDp, server_round: int) -> None:
    s = client_dp.settings
    reason = (
        f"round {server_round} would take client-level epsilon past {s.client_max_epsilon:g} "
        f"(spent {client_dp.epsilon():.3f}); stopping before that release"
    )
    log.warning(reason)
    ledger.append("client_dp_stop", {"round": server_round, "reason": reason})


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: an unbounded epsilon (no noise) is written as null."""
    return value if np.isfinite(value) else None


def _as_reply(state: dict, weight: int) -> Message:
    """The round's aggregate as one reply, so Flower's strategy (FedAvg/FedAdam) applies it."""
    content = RecordDict(
        {"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": weight})}
    )
    return Message(content=content, dst_node_id=0, message_type="train")


def _check_round(server_round: int, asked: int, replies: RoundReplies, secure: dict) -> None:
    """Fail loudly when every site failed: that is a bug or an outage, not a dropout.

    A Poisson sample of sites can be empty. That round is not a failure: the accounting
    counts it like any other, and the release is noise alone.
    """
    for failure in replies.failures:
        log.warning("round %s: %s", server_round, failure)
    if not asked:
        log.warning("round %s: no site was sampled", server_round)
        return
    if replies.ok or replies.refusals or (secure and secure["sampled"] > len(replies.failures)):
        return
    raise FedVaultError(
        f"round {server_round}: no site returned an update"
        + (f" ({replies.failures[0]})" if replies.failures else "")
    )


def _evaluate_at_sites(
    grid: Grid,
    strategy: object,
    server_round: int,
    arrays: ArrayRecord,
    config: ConfigRecord,
    ledger: Ledger,
) -> dict:
    """The sites' DP-noised evaluation sums, pooled: accuracy and loss over all their rows.

    Sites answer only if they allow evaluation, each sum carrying noise they account for;
    the rest refuse, which is recorded and not an error.
    """
    replies = split_replies(
        exchange(
            grid,
            strategy.configure_evaluate(server_round, pack_model(arrays), config, grid),
            float(config["round-timeout"]),
        )
    )
    _record_privacy(ledger, server_round, replies)
    sums = [dict(reply.content["metrics"]) for reply in replies.ok]
    count = sum(float(m.get("eval-count", 0.0)) for m in sums)
    if count < 1:
        return {"sites-evaluated": len(sums)} if sums else {}
    return {
        "sites-evaluated": len(sums),
        "client-eval-accuracy": sum(float(m["eval-correct"]) for m in sums) / count,
        "client-eval-loss": sum(float(m["eval-loss-sum"]) for m in sums) / count,
    }


def _site_epsilons(replies: list[Message]) -> list[float]:
    """Each replying site's cumulative epsilon, from the privacy summary it sent."""
    epsilons = []
    for reply in replies:
        privacy = reply.content.get("privacy")
        if privacy is not None and "summary" in privacy:
            epsilon = json.loads(str(privacy["summary"])).get("epsilon")
            if isinstance(epsilon, int | float):
                epsilons.append(float(epsilon))
    return epsilons


def _record_privacy(ledger: Ledger, server_round: int, replies: RoundReplies) -> None:
    """Append each site's privacy summary, first anonymization report, and refusals.

    One transaction for the round's rows: one disk sync instead of one per site.
    """
    with ledger.exclusive() as tx:
        anonymized = {row.payload["site"] for row in tx.rows("anonymization")}
        for reply in replies.ok:
            privacy = reply.content.get("privacy")
            if privacy is None:
                continue
            site = str(privacy["site"])
            if "summary" in privacy:
                summary = json.loads(str(privacy["summary"]))
                tx.append("site_round", {**summary, "round": server_round})
            elif "arrays" in reply.content or "secagg" in reply.content:
                tx.append("plain_release", {"site": site, "round": server_round})
            if "anonymization" in privacy and site not in anonymized:
                report = json.loads(str(privacy["anonymization"]))
                tx.append("anonymization", {"site": site, "round": server_round, **report})
        for refusal in replies.refusals:
            tx.append("refusal", {**refusal, "round": server_round})
