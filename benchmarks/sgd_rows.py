"""Distributed DP-SGD against DP-SGD on the pooled records: the rows of the privacy table.

Both train the same model for the same number of steps at the same expected batch, noise
multiplier and server optimizer; they differ only where distribution changes the mechanism.
The distributed row is FedVault's step in one process: each site draws its own Poisson batch
from its own records at its own rate (`client.distributed_step`), rounds its clipped sum and
adds its Skellam share (`privacy.distributed_noise`), the int64 vectors are summed with
wrap-around (what secure aggregation releases; tests/test_distributed_noise.py checks the
masked sum equals it), and the server's `DistributedSgd` steps. The pooled row is central
DP-SGD on the union: one Poisson batch over every record, Gaussian noise of std sigma*C on the
clipped sum, the same momentum step (torch.optim.SGD). Sigma is solved per row so that the
row's own accountant reaches the target over all steps: Skellam (with its rounding terms) for
distributed, Gaussian for pooled, both RDP at delta 1e-5.

Hyperparameters are chosen on the sites' validation rows; the test rows score the choice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from client.distributed_step import clipped_gradient_sum
from privacy.accounting import PrivacyEvent, compute_epsilon, solve_noise_multiplier
from privacy.distributed_noise import NoiseShares
from privacy.randomness import SecureRandom
from server.distributed_sgd import DistributedSgd
from tasks.datasets import Dataset
from tasks.evaluation import evaluate
from tasks.models import CNN1D
from tasks.settings import RunSettings
from tasks.wire import float_keys, update_length

DELTA = 1e-5
ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class SgdHyper:
    """One candidate: steps (rounds), per-site batch, server learning rate and momentum."""

    steps: int
    batch_size: int = 512
    learning_rate: float = 2.0
    momentum: float = 0.9
    clip_norm: float = 1.0


@dataclass(frozen=True)
class Split:
    """The records one comparison trains on: each site's training rows, the union of their
    validation rows (where a candidate is chosen), the partition's name and the seed."""

    data: Dataset
    sites: list[np.ndarray]
    validation: np.ndarray
    partition: str
    seed: int


@dataclass(frozen=True)
class SgdRow:
    method: str
    partition: str
    target: float
    hyper: SgdHyper
    sigma: float
    epsilon: float
    validation_accuracy: float
    accuracy: float
    seconds_per_step: float


def _distributed_sigma(target: float, q: float, hyper: SgdHyper, sites: int, dim: int) -> float:
    """The smallest sigma whose Skellam epsilon over `hyper.steps` stays within `target`."""
    sigma = solve_noise_multiplier(target, DELTA, q, hyper.steps, ACCOUNTANT)

    def epsilon(s: float) -> float:
        event = NoiseShares(s, hyper.clip_norm, sites, 0, dim).event(q)
        return compute_epsilon([replace(event, steps=hyper.steps)], DELTA, ACCOUNTANT)

    low, high = sigma, sigma
    while epsilon(high) > target:
        low, high = high, high * 1.01
    for _ in range(12):
        middle = (low + high) / 2
        low, high = (low, middle) if epsilon(middle) <= target else (middle, high)
    return high


def run_distributed(split: Split, target: float, hyper: SgdHyper) -> SgdRow:
    """Distributed DP-SGD as the federation computes it, sites and server in one process."""
    data, sites, seed = split.data, split.sites, split.seed
    torch.manual_seed(seed)
    model = CNN1D(private=True)
    dim = update_length(model.state_dict())
    q0 = min(1.0, hyper.batch_size * len(sites) / sum(len(rows) for rows in sites))
    sigma = _distributed_sigma(target, q0, hyper, len(sites), dim)
    shares = NoiseShares(sigma, hyper.clip_norm, len(sites), 0, dim)
    rates = [min(q0, hyper.batch_size / len(rows)) for rows in sites]
    settings = RunSettings(
        dp_mode="distributed",
        noise_multiplier=sigma,
        clip_norm=hyper.clip_norm,
        batch_size=hyper.batch_size,
        learning_rate=hyper.learning_rate,
        momentum=hyper.momentum,
    )
    server = DistributedSgd(settings)
    rngs = [SecureRandom(insecure_seed=seed * 100 + i) for i in range(len(sites))]
    start = time.perf_counter()
    for _ in range(hyper.steps):
        total = np.zeros(dim, dtype=np.int64)
        for rows, q, rng in zip(sites, rates, rngs, strict=True):
            gradient = clipped_gradient_sum(
                model,
                data.x_train[rows],
                data.y_train[rows],
                sample_rate=q,
                clip_norm=hyper.clip_norm,
                rng=rng,
            )
            total += shares.noisy_share(gradient, rng)
        model.load_state_dict(server.step(model.state_dict(), total, len(sites), len(sites)))
    seconds = (time.perf_counter() - start) / hyper.steps
    epsilon = max(
        compute_epsilon([replace(shares.event(q), steps=hyper.steps)], DELTA, ACCOUNTANT)
        for q in rates
    )
    return _scored("distributed", split, target, hyper, sigma, epsilon, model, seconds)


def run_pooled(split: Split, target: float, hyper: SgdHyper) -> SgdRow:
    """Central DP-SGD on the union of the sites' training rows (no federation)."""
    data, sites, seed = split.data, split.sites, split.seed
    torch.manual_seed(seed)
    model = CNN1D(private=True)
    rows = np.concatenate(sites)
    batch = hyper.batch_size * len(sites)
    q = min(1.0, batch / len(rows))
    sigma = solve_noise_multiplier(target, DELTA, q, hyper.steps, ACCOUNTANT)
    optimizer = torch.optim.SGD(model.parameters(), lr=hyper.learning_rate, momentum=hyper.momentum)
    rng = SecureRandom(insecure_seed=seed)
    x, y = data.x_train[rows], data.y_train[rows]
    start = time.perf_counter()
    for _ in range(hyper.steps):
        gradient = clipped_gradient_sum(
            model, x, y, sample_rate=q, clip_norm=hyper.clip_norm, rng=rng
        )
        noisy = gradient + rng.normal(gradient.shape, sigma * hyper.clip_norm)
        _set_gradients(model, noisy / batch)
        optimizer.step()
    seconds = (time.perf_counter() - start) / hyper.steps
    event = PrivacyEvent(
        noise_multiplier=sigma, sample_rate=q, steps=hyper.steps, clip_norm=hyper.clip_norm
    )
    epsilon = compute_epsilon([event], DELTA, ACCOUNTANT)
    return _scored("pooled", split, target, hyper, sigma, epsilon, model, seconds)


def _set_gradients(model: torch.nn.Module, flat: np.ndarray) -> None:
    """Put a state-dict-ordered gradient vector into the parameters' .grad."""
    state = model.state_dict()
    params = dict(model.named_parameters())
    offset = 0
    for key in float_keys(state):
        size = state[key].numel()
        if key in params:
            chunk = torch.from_numpy(flat[offset : offset + size]).reshape(state[key].shape)
            params[key].grad = chunk.to(params[key].dtype)
        offset += size


def _scored(
    method: str,
    split: Split,
    target: float,
    hyper: SgdHyper,
    sigma: float,
    epsilon: float,
    model: torch.nn.Module,
    seconds: float,
) -> SgdRow:
    data, validation = split.data, split.validation
    _, val_accuracy = evaluate(model, data.x_train[validation], data.y_train[validation])
    _, accuracy = evaluate(model, data.x_test, data.y_test)
    return SgdRow(
        method, split.partition, target, hyper, sigma, epsilon, val_accuracy, accuracy, seconds
    )


RUNNERS = {"distributed": run_distributed, "pooled": run_pooled}


def tuned(
    method: str, split: Split, target: float, candidates: list[SgdHyper]
) -> tuple[SgdRow, list[SgdRow]]:
    """Every candidate trained; the one with the best validation accuracy, and all of them."""
    tried = []
    for hyper in candidates:
        row = RUNNERS[method](split, target, hyper)
        print(
            f"  {method} {split.partition} eps={target:g} steps={hyper.steps} "
            f"lr={hyper.learning_rate:g}"
            f": val {row.validation_accuracy:.4f} test {row.accuracy:.4f} sigma {row.sigma:.3f}"
            f" eps {row.epsilon:.3f} {row.seconds_per_step:.2f}s/step",
            flush=True,
        )
        tried.append(row)
    return max(tried, key=lambda r: r.validation_accuracy), tried
