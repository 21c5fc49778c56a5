"""The empirical membership-inference audit of a simulation's final model.

Only a simulation holds every site's training rows in one place, so only it can measure how
well a loss-threshold attack tells members from non-members: members are rows the sites
trained on (their validation rows excluded), non-members the task's held-out test set. The
result is a LOWER bound on epsilon, reported next to the claimed one, never as a guarantee.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from client.data import cached_dataset, load_site_data
from client.site import Site
from privacy.audit import loss_threshold_audit
from tasks.settings import RunSettings

MAX_MEMBERS = 20000


def audit_model(settings: RunSettings, num_sites: int, model: nn.Module) -> dict | None:
    """AUC, TPR at low FPR and the implied epsilon lower bound; None for tabular tasks."""
    if settings.task.name == "tabular":
        return None
    x_parts, y_parts = [], []
    for index in range(num_sites):
        site = Site(
            f"site-{index}",
            Path(settings.sites_root) / f"site-{index}",
            partition_id=index,
            num_partitions=num_sites,
        )
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
        settings.delta,
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
