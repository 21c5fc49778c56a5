"""The FedVault ClientApp: what a site does when the server asks it to train or evaluate.

A plain train request gets the site's update in the clear. Under secure aggregation the
server sends the four SecAgg+ stages as `train.secagg` messages; the site checks its budget
at setup (declining before it joins), trains at the masked-input stage and sends only its
masked update. Either way the site's own settings, policy and ledger decide what it does.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.local_round import (
    LocalUpdate,
    budget_refusal,
    local_update,
    masked_vector,
    prepare,
    round_settings,
)
from client.site import Site, resolve_site
from privacy.errors import FedVaultError
from privacy.secagg import SecAggClient
from privacy.secagg import messages as m
from tasks.evaluation import evaluate
from tasks.wire import protocol_message, protocol_records

app = ClientApp()

SECAGG_STATE = "secagg-client"


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    work = prepare(msg, context)
    _maybe_drop_out(work.site, "train")
    update = local_update(msg, context, work)
    if update.refusal is not None:
        return _refusal_reply(msg, update.refusal)
    content = RecordDict(
        {
            "arrays": ArrayRecord(update.model.state_dict()),
            "metrics": _metrics(update),
            "privacy": update.privacy,
        }
    )
    return Message(content=content, reply_to=msg)


@app.train("secagg")
def secagg_handler(msg: Message, context: Context) -> Message:
    """One SecAgg+ stage; only setup (budget check) and masked input need the site's data."""
    request = protocol_message(msg.content)
    stage = request[m.STAGE]
    settings, _ = round_settings(msg)
    site = resolve_site(dict(context.node_config), settings.sites_root)
    _maybe_drop_out(site, stage)
    client = (
        SecAggClient.from_state(dict(context.state[SECAGG_STATE]))
        if SECAGG_STATE in context.state
        else SecAggClient(context.node_id)
    )
    extra: dict = {}
    if stage == m.SETUP and settings.dp:
        refusal = budget_refusal(prepare(msg, context), context, str(msg.metadata.run_id))
        if refusal is not None:
            return _refusal_reply(msg, refusal)
    if stage == m.MASKED_INPUT:
        work = prepare(msg, context)
        update = local_update(msg, context, work)
        if update.refusal is not None:
            return _refusal_reply(msg, update.refusal)
        vector, weight = masked_vector(msg, work, update)
        reply = client.handle(request, vector, weight)
        extra = {"metrics": _metrics(update), "privacy": update.privacy}
    else:
        reply = client.handle(request)
    context.state[SECAGG_STATE] = ConfigRecord(client.to_state())
    return Message(content=RecordDict({**protocol_records(reply), **extra}), reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    work = prepare(msg, context)
    loss, accuracy = evaluate(work.global_model(msg), work.data.x_val, work.data.y_val)
    metrics = MetricRecord(
        {"num-examples": len(work.data.y_val), "eval-loss": loss, "eval-accuracy": accuracy}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def _maybe_drop_out(site: Site, stage: str) -> None:
    if site.dropout_stage == stage:
        raise FedVaultError(f"{site.name}: leaving at stage {stage} (dropout-stage)")


def _metrics(update: LocalUpdate) -> MetricRecord:
    metrics = MetricRecord(
        {"num-examples": update.result.num_examples, "train-loss": update.result.loss}
    )
    if update.epsilon is not None:
        metrics["epsilon"] = update.epsilon
    return metrics


def _refusal_reply(msg: Message, refusal: ConfigRecord) -> Message:
    return Message(content=RecordDict({"refusal": refusal}), reply_to=msg)
