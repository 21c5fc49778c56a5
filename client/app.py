"""The FedVault ClientApp: what a site does when the server asks it to train or evaluate.

Each train request: resolve the site (its own settings), load its rows, apply its
anonymization policy, ask its ledger whether this round fits its budget (decline if not),
train (DP-SGD when on), record the privacy event, and reply with the update, its metrics and
the site's events so the server can keep the run's ledger.
"""

from __future__ import annotations

import functools
import json

import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.budget import BudgetExhausted, SiteBudget
from client.data import SiteData, cached_schema, load_site_data, site_table
from client.policy import apply_site_policy
from client.site import Site, resolve_site
from client.training import DpSgd, TrainResult, train
from tasks.evaluation import evaluate
from tasks.registry import TaskSettings, build_model
from tasks.settings import RunSettings

app = ClientApp()

ROUND_KEYS = ("server-round", "proximal-mu")


def round_settings(msg: Message) -> tuple[RunSettings, int]:
    """The coordinator's settings and the round number carried by a request."""
    config = dict(msg.content["config"])
    server_round = int(config.get("server-round", 0))
    return RunSettings.from_config({k: v for k, v in config.items() if k not in ROUND_KEYS}), (
        server_round
    )


def prepare(msg: Message, context: Context) -> tuple[RunSettings, int, Site, SiteData, dict]:
    """Settings, round, site and its (policy-applied) data, plus the policy's metrics."""
    settings, server_round = round_settings(msg)
    site = resolve_site(dict(context.node_config), settings.sites_root)
    table, anonymization = None, {}
    if settings.task.name == "tabular":
        table, anonymization = released_table(settings.task, site, settings.partition)
    data = load_site_data(settings.task, site, settings.partition, table)
    return settings, server_round, site, data, anonymization


@functools.lru_cache(maxsize=8)
def released_table(task: TaskSettings, site: Site, partition: str) -> tuple[pd.DataFrame, dict]:
    """The site's rows after its policy: computed once per process, reused every round."""
    table = site_table(task, site, partition)
    if not site.policy_path:
        return table, {}
    return apply_site_policy(table, site, cached_schema(task.schema))


def global_model(msg: Message, settings: RunSettings, data: SiteData) -> torch.nn.Module:
    model = build_model(settings.task.name, data.num_features, data.num_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def local_update(
    msg: Message, settings: RunSettings, data: SiteData, server_round: int, dp: DpSgd | None
) -> tuple[torch.nn.Module, TrainResult]:
    """Train the global model on this site's rows; the model leaves unwrapped."""
    model = global_model(msg, settings, data)
    result = train(
        model,
        data.x_train,
        data.y_train,
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        momentum=settings.momentum,
        proximal_mu=float(msg.content["config"].get("proximal-mu", 0.0)),
        dp=dp,
        seed=settings.task.seed * 1000 + server_round,
    )
    return model, result


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    settings, server_round, site, data, anonymization = prepare(msg, context)
    privacy = ConfigRecord({"site": site.name})
    if anonymization:
        privacy["anonymization"] = json.dumps(anonymization)
    if not settings.dp:
        model, result = local_update(msg, settings, data, server_round, dp=None)
        return update_reply(msg, model, result, privacy)
    run_id = str(msg.metadata.run_id)
    with SiteBudget.open(site, settings, data, context.state) as budget:
        try:
            dp = budget.plan_round(server_round)
        except BudgetExhausted as refusal:
            budget.record_refusal(run_id, server_round, refusal)
            refusal_record = ConfigRecord(refusal.to_record())
            return Message(content=RecordDict({"refusal": refusal_record}), reply_to=msg)
        model, result = local_update(msg, settings, data, server_round, dp)
        summary = budget.record_round(run_id, server_round, dp, result)
    privacy["summary"] = json.dumps(summary)
    return update_reply(msg, model, result, privacy, epsilon=summary["epsilon"])


def update_reply(
    msg: Message,
    model: torch.nn.Module,
    result: TrainResult,
    privacy: ConfigRecord,
    epsilon: float | None = None,
) -> Message:
    metrics = MetricRecord({"num-examples": result.num_examples, "train-loss": result.loss})
    if epsilon is not None:
        metrics["epsilon"] = epsilon
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": metrics, "privacy": privacy}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    settings, _, _, data, _ = prepare(msg, context)
    model = global_model(msg, settings, data)
    loss, accuracy = evaluate(model, data.x_val, data.y_val)
    metrics = MetricRecord(
        {"num-examples": len(data.y_val), "eval-loss": loss, "eval-accuracy": accuracy}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
