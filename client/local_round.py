"""One release at a site: load its rows, reserve the cost, train or evaluate, report.

Shared by the plain `train` handler, the masked-input stage of secure aggregation and the
`evaluate` handler, so a site checks, reserves, releases and records the same way in all.
The order is the guarantee: the request has passed the floor (client/request.py) and its
model has loaded before the cost is reserved, and the cost is reserved before any row is
used. What goes back is the model (or the masked vector), the site's privacy summary and,
only where the site declared its record count public, that count: no training loss, no
un-noised evaluation metric.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from torch import nn

from client.budget import SiteBudget, evaluation_event
from client.data import SiteData, SiteRound
from client.request import SiteRequest, malformed
from client.site import Site
from client.training import TrainResult, train
from privacy.distributed_noise import honest_shares
from privacy.dp_ledger import Refused, Reservation
from privacy.errors import FedVaultError
from privacy.randomness import SecureRandom
from tasks.registry import build_model
from tasks.wire import flatten_update, unpack_model, update_length

LOSS_CAP = 10.0  # per-example loss is clipped here before an evaluation sum is released


@dataclass
class Release:
    """What a site sends back: a trained model or evaluation sums, and its privacy record."""

    privacy: ConfigRecord
    model: nn.Module | None = None
    result: TrainResult | None = None
    metrics: dict = field(default_factory=dict)


def site_rng(site: Site, request: SiteRequest) -> SecureRandom:
    """The site's randomness: the OS CSPRNG, or (simulation research mode) its seed."""
    if site.insecure_seed is None:
        return SecureRandom()
    digest = hashlib.sha256(
        f"{site.insecure_seed}/{site.name}/{request.server_round}".encode()
    ).digest()
    return SecureRandom(insecure_seed=int.from_bytes(digest[:8], "big"))


def noise_record(site: Site, rng: SecureRandom) -> dict:
    """How the site drew its noise, for its ledger and the report."""
    return {
        "noise-source": rng.source,
        "secure-rng": rng.secure,
        "floor": site.floor.to_record(),
        "public-record-count": site.public_record_count,
    }


def private_release(msg: Message, context: Context, work: SiteRound, budget: SiteBudget) -> Release:
    """Train on the site's rows (DP-SGD unless the site allows otherwise) and record it."""
    request, site, data = work.request, work.site, work.data
    settings = request.settings
    model = global_model(request, msg, data.num_features, data.num_classes)
    rng = site_rng(site, request)
    privacy = ConfigRecord({"site": site.name})
    if work.anonymization:
        privacy["anonymization"] = json.dumps(work.anonymization)
    if not settings.dp:
        budget.record_plain_release(request.run_id, request.server_round, "train")
        result = _train(model, work, rng, None)
        return Release(privacy, model, result, _count(site, data))
    dp, event = budget.plan_training(request.server_round, len(data.y_train))
    reservation = Reservation(
        request.run_id, request.server_round, "train", event, noise_record(site, rng)
    )
    epsilon = budget.reserve(reservation)
    try:
        result = _train(model, work, rng, dp)
    except BaseException:
        budget.cancel(reservation, "training failed before anything was released")
        raise
    budget.commit(reservation)
    privacy["summary"] = json.dumps(budget.summary(reservation, epsilon))
    return Release(privacy, model, result, _count(site, data))


def distributed_release(
    msg: Message, work: SiteRound, budget: SiteBudget, threshold: int
) -> tuple[Release, np.ndarray]:
    """One distributed DP-SGD step: the clipped gradient sum plus this site's noise share.

    `threshold` is the secure-aggregation threshold the site checked at setup: the fewest
    contributors a released sum can hold, which sizes the share.
    """
    from client.distributed_step import clipped_gradient_sum

    request, site, data = work.request, work.site, work.data
    model = global_model(request, msg, data.num_features, data.num_classes)
    rng = site_rng(site, request)
    shares, event, fallback = budget.plan_step(
        request.server_round, len(data.y_train), threshold, update_length(model.state_dict())
    )
    details = {
        **noise_record(site, rng),
        "fallback-event": fallback.to_dict(),
        "noise-shares": {
            "threshold": shares.threshold,
            "colluders": shares.colluders,
            "honest": shares.honest,
        },
    }
    reservation = Reservation(request.run_id, request.server_round, "train", event, details)
    epsilon = budget.reserve(reservation)
    try:
        gradient = clipped_gradient_sum(
            model,
            data.x_train,
            data.y_train,
            sample_rate=event.sample_rate,
            clip_norm=event.clip_norm,
            rng=rng,
        )
        vector = shares.noisy_share(gradient, rng)
    except BaseException:
        budget.cancel(reservation, "the step failed before anything was released")
        raise
    budget.commit(reservation)
    privacy = ConfigRecord({"site": site.name})
    if work.anonymization:
        privacy["anonymization"] = json.dumps(work.anonymization)
    privacy["summary"] = json.dumps(budget.summary(reservation, epsilon))
    return Release(privacy, metrics=_count(site, data)), vector


def private_evaluation(
    msg: Message, context: Context, work: SiteRound, budget: SiteBudget
) -> Release:
    """Sums over the site's validation rows (correct, loss, count), each with DP noise."""
    request, site, data = work.request, work.site, work.data
    if len(data.y_val) == 0:
        raise Refused("no-validation-rows", f"{site.name}: it holds no validation rows")
    model = global_model(request, msg, data.num_features, data.num_classes)
    rng = site_rng(site, request)
    sigma = site.floor.evaluation_noise_multiplier
    event = evaluation_event(sigma)
    reservation = Reservation(
        request.run_id, request.server_round, "evaluate", event, noise_record(site, rng)
    )
    epsilon = budget.reserve(reservation)
    correct, loss_sum = _evaluation_sums(model, data.x_val, data.y_val)
    noisy = np.array([correct, loss_sum / LOSS_CAP, len(data.y_val)]) + rng.masked_normal(3, sigma)
    budget.commit(reservation)
    privacy = ConfigRecord(
        {"site": site.name, "summary": json.dumps(budget.summary(reservation, epsilon))}
    )
    metrics = {
        "eval-correct": float(noisy[0]),
        "eval-loss-sum": float(noisy[1] * LOSS_CAP),
        "eval-count": float(noisy[2]),
    }
    return Release(privacy, metrics=metrics)


@dataclass(frozen=True)
class ClientShares:
    """This round's client-level clip norm and this site's noise shares (std, per vector)."""

    clip_norm: float
    update_std: float = 0.0
    count_std: float = 0.0


def client_shares(request: SiteRequest, site: Site, threshold: int) -> ClientShares | None:
    """The site's own sizing of its client-level noise, checked before anything is spent.

    The server chooses C (the clip norm is public, and privacy rests on noise / C), but not
    the noise: in distributed mode the site adds the run's sigma (raised by adaptive
    clipping's count noise, as the accounting assumes) times C over the square root of the
    honest shares every released sum holds, `threshold - dp-colluders` (the threshold it
    checked at setup), and its share of the count noise. The server never sends a share.
    """
    s = request.settings
    if not s.client_dp:
        return None
    clip_norm = request.float_setting("round-clip-norm")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise malformed(f"round-clip-norm must be > 0, got {clip_norm!r}")
    if s.client_dp_noise_mode != "distributed":
        return ClientShares(clip_norm)
    from privacy.client_dp import (  # dp-accounting: slow to import
        central_noise_std,
        distributed_share_std,
        update_noise_multiplier,
    )

    try:
        honest = honest_shares(threshold, s.dp_colluders)
    except FedVaultError as exc:
        raise Refused("below-floor", f"{site.name}: {exc}", floor="tolerated-colluders") from None
    adaptive = s.client_dp_adaptive
    sigma = (
        update_noise_multiplier(s.client_dp_noise, s.client_dp_count_noise)
        if adaptive
        else s.client_dp_noise
    )
    update = distributed_share_std(central_noise_std(sigma, clip_norm), honest)
    count = distributed_share_std(s.client_dp_count_noise, honest) if adaptive else 0.0
    return ClientShares(clip_norm, update, count)


def masked_vector(
    msg: Message, work: SiteRound, release: Release, shares: ClientShares | None
) -> tuple[np.ndarray, int]:
    """The vector and weight this site puts into secure aggregation.

    Without client-level DP: its model delta, weighted by its number of examples if the
    site declared that number public, else by 1. With it: the delta clipped to this round's
    C (before masking: the server never sees it), plus this site's noise share in
    distributed mode, unweighted; under adaptive clipping one more coordinate says whether
    the delta fitted in C (plus its count-noise share), so only the noisy count is revealed.
    """
    vector = flatten_update(release.model.state_dict(), unpack_model(msg.content["arrays"]))
    if shares is None:
        weight = len(work.data.y_train) if work.site.public_record_count else 1
        return vector, weight
    from privacy.client_dp import clip_update  # dp-accounting: slow to import

    rng = SecureRandom()
    (vector,), _, was_clipped = clip_update([vector], shares.clip_norm)
    if shares.update_std > 0:
        vector = vector + rng.normal(vector.shape, shares.update_std)
    if work.request.settings.client_dp_adaptive:
        fitted = 0.0 if was_clipped else 1.0
        if shares.count_std > 0:
            fitted += float(rng.normal(1, shares.count_std)[0])
        vector = np.append(vector, fitted)
    return vector, 1


def _count(site: Site, data: SiteData) -> dict:
    """The record count, sent only where the site declared it public."""
    return {"num-examples": len(data.y_train)} if site.public_record_count else {}


def _train(model: nn.Module, work: SiteRound, rng: SecureRandom, dp: object) -> TrainResult:
    settings = work.request.settings
    return train(
        model,
        work.data.x_train,
        work.data.y_train,
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        momentum=settings.momentum,
        proximal_mu=work.request.float_setting("proximal-mu"),
        dp=dp,
        rng=rng,
    )


def _evaluation_sums(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Correct predictions and the sum of per-example losses clipped to LOSS_CAP."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in torch.as_tensor(np.array(x)).split(4096)])
        target = torch.as_tensor(np.array(y))
        losses = nn.functional.cross_entropy(logits, target, reduction="none")
        losses = torch.nan_to_num(losses, nan=LOSS_CAP, posinf=LOSS_CAP).clamp(0.0, LOSS_CAP)
        correct = (logits.argmax(1) == target).sum().item()
    loss_sum = float(losses.sum().item())
    return float(correct), loss_sum if math.isfinite(loss_sum) else LOSS_CAP * len(y)


def global_model(request: SiteRequest, msg: Message, num_features: int, num_classes: int):
    """The model the request carries, loaded into the task's architecture, or Refused."""
    model = build_model(
        request.settings.task.name, num_features, num_classes, private=request.settings.dp
    )
    if "arrays" not in msg.content:
        raise malformed("it carries no model")
    try:
        model.load_state_dict(unpack_model(msg.content["arrays"]))
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise malformed(f"its model does not fit the task's architecture ({exc})") from None
    for tensor in model.state_dict().values():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise malformed("its model holds NaN or infinite weights")
    return model
