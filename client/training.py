"""Local training and evaluation at a site, with or without DP-SGD (Opacus).

Private and non-private training share one loop. With DP, Opacus clips each example's
gradient to `clip_norm`, adds Gaussian noise of scale `noise_multiplier * clip_norm`, and
draws batches by Poisson sampling, the assumption its accountants (and ours) make. The
privacy cost is returned as the event that actually ran (q, sigma, steps); epsilon is
derived from events in the site's ledger, never from a per-round accountant.

FedProx's proximal term is applied as a step toward the global weights after each optimizer
step. It depends on no example, so it is the same under DP, where a loss term on the weights
alone would be lost when Opacus replaces the gradient with the clipped per-sample sum.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privacy.errors import FedVaultError


@dataclass(frozen=True)
class DpSgd:
    """The DP-SGD mechanism parameters for one round of local training."""

    noise_multiplier: float
    clip_norm: float
    secure_mode: bool = False
    grad_sample_mode: str = "ew"


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training did: examples seen, mean loss, and its DP event."""

    num_examples: int
    loss: float
    sample_rate: float = 0.0
    steps: int = 0


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float = 0.0,
    proximal_mu: float = 0.0,
    dp: DpSgd | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train `model` in place on (x, y); returns the loss and, with DP, the steps and q."""
    if len(x) == 0:
        raise FedVaultError("this site has no training records")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=min(batch_size, len(x)),
        shuffle=True,
        generator=generator,
    )
    global_weights = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    trained = model
    if dp is not None:
        trained, optimizer, loader = _make_private(model, optimizer, loader, dp)
    trained.train()
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    losses: list[float] = []
    steps = 0
    for _ in range(epochs):
        for xb, yb in loader:
            if len(xb) == 0:
                continue
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(trained(xb), yb)
            loss.backward()
            optimizer.step()
            if proximal_mu > 0:
                _proximal_step(model, global_weights, learning_rate * proximal_mu)
            losses.append(loss.item())
            steps += 1
    if dp is None:
        return TrainResult(len(x), float(np.mean(losses)) if losses else 0.0)
    # Poisson batches may be empty: every drawn batch counts as a step for the accountant.
    steps = epochs * len(loader)
    return TrainResult(len(x), float(np.mean(losses)) if losses else 0.0, loader.sample_rate, steps)


def check_model(model: nn.Module, fix: bool = False) -> nn.Module:
    """Refuse (or, with `fix`, repair) a model Opacus cannot train per-sample."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    if fix:
        return ModuleValidator.fix(model)
    raise FedVaultError(
        f"model is not DP-SGD compatible: {errors[0]} (set fix-model = true to replace "
        "BatchNorm with GroupNorm automatically)"
    )


def _make_private(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, dp: DpSgd
) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    from opacus import PrivacyEngine

    check_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(secure_mode=dp.secure_mode)
        private_model, private_optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.clip_norm,
            poisson_sampling=True,
            grad_sample_mode=dp.grad_sample_mode,
        )
    return private_model, private_optimizer, private_loader


def _proximal_step(model: nn.Module, global_weights: list[torch.Tensor], rate: float) -> None:
    with torch.no_grad():
        for param, anchor in zip(model.parameters(), global_weights, strict=True):
            param.sub_(rate * (param - anchor))
