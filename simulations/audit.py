"""The empirical membership-inference audit of a simulation's final model.

Only a simulation holds every site's training rows in one place, so only it can measure how
well a loss-threshold attack tells members from non-members: members are the training rows
(validation rows excluded) of the sites that trained, non-members the task's held-out test
set. Rows of a site that refused or was never sampled were never in the model, and counting
them as members would dilute the attack and understate what it finds. The bound uses the
sites' own delta (the largest among the sites that trained, so that it is a lower bound
against every one of their claims), never the server's setting. The result is a LOWER bound
on epsilon, reported next to the claimed one, never as a guarantee.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from client.data import cached_dataset, load_site_data
from client.site import resolve_site
from privacy.audit import loss_threshold_audit
from tasks.settings import RunSettings

MAX_MEMBERS = 20000


def audit_model(
    settings: RunSettings,
    num_sites: int,
    model: nn.Module,
    trained_sites: Sequence[int] | None = None,
) -> dict | None:
    """AUC, TPR at low FPR and the implied epsilon lower bound; None for tabular tasks.

    `trained_sites` are the partition ids of the sites whose updates reached the model (at
    least one round); None means all `num_sites` (right only when every site trained). An
    empty list gives None: no site trained, there is nothing to attack.
    """
    if settings.task.name == "tabular":
        return None
    indices = range(num_sites) if trained_sites is None else sorted(set(trained_sites))
    sites = [
        resolve_site({"partition-id": index, "num-partitions": num_sites}, settings.sites_root)
        for index in indices
    ]
    if not sites:
        return None
    x_parts, y_parts = [], []
    for site in sites:
        data = load_site_data(settings.task, site, settings.partition)
        x_parts.append(data.x_train)
        y_parts.append(data.y_train)
    members_x, members_y = np.concatenate(x_parts), np.concatenate(y_parts)
    if len(members_y) > MAX_MEMBERS:
        keep = np.random.default_rng(settings.task.seed).choice(
            len(members_y), MAX_MEMBERS, replace=False
        )
        members_x, members_y = members_x[keep], members_y[keep]
    dataset = cached_dataset(settings.task)
    return loss_threshold_audit(
        per_example_losses(model, members_x, members_y),
        per_example_losses(model, dataset.x_test, dataset.y_test),
        max(site.delta for site in sites),
    )


def per_example_losses(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        losses = [
            nn.functional.cross_entropy(model(xb), yb, reduction="none")
            for xb, yb in zip(
                torch.from_numpy(x).split(4096), torch.from_numpy(y).split(4096), strict=True
            )
        ]
    return torch.cat(losses).numpy()
