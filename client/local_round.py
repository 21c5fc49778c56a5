"""One round of work at a site: its settings and data, its budget check, its local update.

Shared by the plain `train` handler and the masked-input stage of secure aggregation, so a
site trains, guards its budget and records its privacy events the same way in both.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from flwr.app import ConfigRecord, Context, Message

from client.budget import BudgetExhausted, SiteBudget
from client.data import SiteData, cached_schema, load_site_data, site_table
from client.policy import apply_site_policy
from client.site import Site, resolve_site
from client.training import TrainResult, train
from tasks.registry import TaskSettings, build_model
from tasks.settings import RunSettings
from tasks.wire import flatten_update

ROUND_KEYS = ("server-round", "proximal-mu", "round-clip-norm", "round-noise-share-std")


@dataclass
class SiteRound:
    """A request's settings, round number, site and the site's (policy-applied) data."""

    settings: RunSettings
    server_round: int
    site: Site
    data: SiteData
    anonymization: dict

    def global_model(self, msg: Message) -> torch.nn.Module:
        model = build_model(
            self.settings.task.name,
            self.data.num_features,
            self.data.num_classes,
            private=self.settings.dp,
        )
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        return model


@dataclass
class LocalUpdate:
    """A trained model and what to tell the server about it, or the site's refusal."""

    model: torch.nn.Module | None = None
    result: TrainResult | None = None
    privacy: ConfigRecord | None = None
    epsilon: float | None = None
    refusal: ConfigRecord | None = None


def round_settings(msg: Message) -> tuple[RunSettings, int]:
    """The coordinator's settings and the round number carried by a request."""
    config = dict(msg.content["config"])
    server_round = int(config.get("server-round", 0))
    settings = RunSettings.from_config({k: v for k, v in config.items() if k not in ROUND_KEYS})
    return settings, server_round


def prepare(msg: Message, context: Context) -> SiteRound:
    """Resolve the site and load its rows, after its anonymization policy if tabular."""
    settings, server_round = round_settings(msg)
    site = resolve_site(dict(context.node_config), settings.sites_root)
    table, anonymization = None, {}
    if settings.task.name == "tabular":
        table, anonymization = released_table(settings.task, site, settings.partition)
    data = load_site_data(settings.task, site, settings.partition, table)
    return SiteRound(settings, server_round, site, data, anonymization)


@functools.lru_cache(maxsize=8)
def released_table(task: TaskSettings, site: Site, partition: str) -> tuple[pd.DataFrame, dict]:
    """The site's rows after its policy: computed once per process, reused every round."""
    table = site_table(task, site, partition)
    if not site.policy_path:
        return table, {}
    return apply_site_policy(table, site, cached_schema(task.schema))


def budget_refusal(work: SiteRound, context: Context, run_id: str) -> ConfigRecord | None:
    """The site's refusal if this round would pass its budget (recorded in its ledger)."""
    if not work.settings.dp:
        return None
    with SiteBudget.open(work.site, work.settings, work.data, context.state) as budget:
        try:
            budget.plan_round(work.server_round)
        except BudgetExhausted as refusal:
            budget.record_refusal(run_id, work.server_round, refusal)
            return ConfigRecord(refusal.to_record())
    return None


def local_update(msg: Message, context: Context, work: SiteRound) -> LocalUpdate:
    """Train on the site's rows (DP-SGD when on) and record the privacy event it cost."""
    settings = work.settings
    privacy = ConfigRecord({"site": work.site.name})
    if work.anonymization:
        privacy["anonymization"] = json.dumps(work.anonymization)
    if not settings.dp:
        model, result = _train(msg, work, dp=None)
        return LocalUpdate(model, result, privacy)
    run_id = str(msg.metadata.run_id)
    with SiteBudget.open(work.site, settings, work.data, context.state) as budget:
        try:
            dp = budget.plan_round(work.server_round)
        except BudgetExhausted as refusal:
            budget.record_refusal(run_id, work.server_round, refusal)
            return LocalUpdate(refusal=ConfigRecord(refusal.to_record()))
        model, result = _train(msg, work, dp)
        summary = budget.record_round(run_id, work.server_round, dp, result)
    privacy["summary"] = json.dumps(summary)
    return LocalUpdate(model, result, privacy, epsilon=summary["epsilon"])


def masked_vector(msg: Message, work: SiteRound, update: LocalUpdate) -> tuple[np.ndarray, int]:
    """The vector and weight this site puts into secure aggregation.

    Without client-level DP: its model delta, weighted by its number of examples. With it:
    the delta clipped to this round's C (before masking: the server never sees it), plus
    this site's share of the noise in distributed mode, unweighted; under adaptive clipping
    one more coordinate says whether the delta fitted in C, so only the count is revealed.
    """
    config = msg.content["config"]
    vector = flatten_update(update.model.state_dict(), msg.content["arrays"].to_torch_state_dict())
    if not work.settings.client_dp:
        return vector, update.result.num_examples
    from privacy.client_dp import SecureGaussian, clip_update  # dp-accounting: slow to import

    (vector,), _, was_clipped = clip_update([vector], float(config["round-clip-norm"]))
    share_std = float(config.get("round-noise-share-std", 0.0))
    if share_std > 0:
        vector = vector + SecureGaussian().normal(vector.shape, share_std)
    if work.settings.client_dp_adaptive:
        vector = np.append(vector, 0.0 if was_clipped else 1.0)
    return vector, 1


def _train(msg: Message, work: SiteRound, dp: object) -> tuple[torch.nn.Module, TrainResult]:
    settings = work.settings
    model = work.global_model(msg)
    result = train(
        model,
        work.data.x_train,
        work.data.y_train,
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        momentum=settings.momentum,
        proximal_mu=float(msg.content["config"].get("proximal-mu", 0.0)),
        dp=dp,
        seed=settings.task.seed * 1000 + work.server_round,
    )
    return model, result
