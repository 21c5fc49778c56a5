"""Local training at a site, with or without DP-SGD, its randomness drawn at the site.

With DP, Opacus computes each example's gradient and clips it to `clip_norm`; the noise and
the Poisson sampling, the two random choices the guarantee rests on, come from the site's
`SecureRandom` (the OS CSPRNG), never from a seed in the run settings. The pieces are
Opacus' own (`wrap_model`, `DPOptimizer`, its empty-batch collation); only the noise source
and the batch sampler are FedVault's, so the noise is Opacus' `secure_mode` noise (four
Gaussians summed, halved) without the torchcsprng package that mode needs. Every Poisson
batch is one noisy step, an empty one included, as the accountant assumes. The privacy cost
is returned as the event that actually ran (q, sigma, steps); epsilon is derived from events
in the site's ledger.

FedProx's proximal term is applied as a step toward the global weights after each optimizer
step. It depends on no example, so it is the same under DP, where a loss term on the weights
alone would be lost when Opacus replaces the gradient with the clipped per-sample sum.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.dp_plan import DpSgd
from privacy.errors import FedVaultError
from privacy.randomness import SecureRandom


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training did: examples, mean batch loss, and its DP steps."""

    num_examples: int
    loss: float
    steps: int = 0


class PoissonBatches:
    """Batches of a Poisson-sampled epoch: each record joins each batch with probability q."""

    def __init__(self, num_records: int, sample_rate: float, rng: SecureRandom) -> None:
        self.num_records = num_records
        self.sample_rate = sample_rate
        self.rng = rng

    def __len__(self) -> int:
        return round(1 / self.sample_rate)

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(len(self)):
            mask = self.rng.bernoulli(self.num_records, self.sample_rate)
            yield np.flatnonzero(mask).tolist()


def _site_optimizer_class() -> type:
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class SiteNoiseOptimizer(DPOptimizer):
        """Opacus' DPOptimizer with its noise drawn from the site's SecureRandom."""

        def __init__(self, *args: object, rng: SecureRandom, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.rng = rng

        def add_noise(self) -> None:
            """One draw for the whole step, split over the parameters."""
            std = self.noise_multiplier * self.max_grad_norm
            sizes = [p.summed_grad.numel() for p in self.params]
            noise = torch.from_numpy(self.rng.masked_normal(sum(sizes), std))
            for p, chunk in zip(self.params, noise.split(sizes), strict=True):
                _check_processed_flag(p.summed_grad)
                p.grad = (p.summed_grad + chunk.view_as(p.summed_grad).to(p.dtype)).view_as(p)
                _mark_as_processed(p.summed_grad)

    return SiteNoiseOptimizer


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    rng: SecureRandom,
    momentum: float = 0.0,
    proximal_mu: float = 0.0,
    dp: DpSgd | None = None,
) -> TrainResult:
    """Train `model` in place on (x, y); returns the mean batch loss and, with DP, the steps."""
    if len(x) == 0:
        raise FedVaultError("this site has no training records")
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    global_weights = [p.detach().clone() for p in model.parameters()]
    if dp is None:
        generator = torch.Generator().manual_seed(int(rng.uniform(1)[0] * 2**53))
        loader = DataLoader(
            dataset, batch_size=min(batch_size, len(x)), shuffle=True, generator=generator
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
        trained = model
    else:
        trained, optimizer, loader = _make_private(model, dataset, learning_rate, momentum, dp, rng)
    trained.train()
    losses: list[float] = []
    steps = 0
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            if len(xb) == 0:
                _empty_batch(trained)
            else:
                loss = nn.functional.cross_entropy(trained(xb), yb)
                loss.backward()
                losses.append(loss.item())
            optimizer.step()
            if proximal_mu > 0:
                _proximal_step(model, global_weights, learning_rate * proximal_mu)
            steps += 1
    mean_loss = float(np.mean(losses)) if losses else 0.0
    return TrainResult(len(x), mean_loss, steps if dp is not None else 0)


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
    model: nn.Module,
    dataset: TensorDataset,
    learning_rate: float,
    momentum: float,
    dp: DpSgd,
    rng: SecureRandom,
) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    from opacus.data_loader import wrap_collate_with_empty
    from opacus.grad_sample import wrap_model
    from torch.utils.data._utils.collate import default_collate

    check_model(model)
    num_records = len(dataset)
    private_model = wrap_model(
        model, grad_sample_mode=dp.grad_sample_mode, batch_first=True, loss_reduction="mean"
    )
    sample_x, sample_y = dataset[0]
    loader = DataLoader(
        dataset,
        batch_sampler=PoissonBatches(num_records, dp.sample_rate, rng),
        collate_fn=wrap_collate_with_empty(
            collate_fn=default_collate,
            sample_empty_shapes=[(0, *sample_x.shape), (0, *sample_y.shape)],
            dtypes=[sample_x.dtype, sample_y.dtype],
        ),
    )
    optimizer = _site_optimizer_class()(
        torch.optim.SGD(private_model.parameters(), lr=learning_rate, momentum=momentum),
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.clip_norm,
        expected_batch_size=num_records * dp.sample_rate,
        loss_reduction="mean",
        rng=rng,
    )
    return private_model, optimizer, loader


def _empty_batch(model: nn.Module) -> None:
    """An empty Poisson batch contributes no gradient: the step is noise alone."""
    for param in model.parameters():
        if param.requires_grad:
            param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype)


def _proximal_step(model: nn.Module, global_weights: list[torch.Tensor], rate: float) -> None:
    with torch.no_grad():
        for param, anchor in zip(model.parameters(), global_weights, strict=True):
            param.sub_(rate * (param - anchor))
