"""A site's DP-SGD and its planning: noise from the site's CSPRNG, empty batches as noisy
steps, and the noise planned for the rounds that remain (also after a resume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from client.budget import SiteBudget
from client.dp_plan import DpSgd, poisson_plan
from client.site import make_site
from client.training import PoissonBatches, train
from privacy.accounting import compute_epsilon
from privacy.dp_ledger import Reservation, commit, spent_events
from privacy.randomness import SecureRandom
from tasks.models import CNN1D
from tasks.settings import RunSettings


def data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 40)).astype(np.float32), rng.integers(0, 10, n)


class NoRecords(SecureRandom):
    """A randomness source whose Poisson batches are always empty."""

    def bernoulli(self, size: int, probability: float) -> np.ndarray:
        return np.zeros(size, dtype=bool)


def weights(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().double().reshape(-1).numpy() for p in model.parameters()])


def test_an_empty_poisson_batch_still_takes_its_noisy_step():
    x, y = data()
    q, _ = poisson_plan(len(y), 30, 1)
    model = CNN1D(private=True)
    before = weights(model)
    result = train(
        model, x, y, epochs=1, batch_size=30, learning_rate=0.5,
        rng=NoRecords(), dp=DpSgd(1.0, 1.0, q),
    )  # fmt: skip
    assert result.steps == 10  # every drawn batch is a step, though all were empty
    moved = weights(model) - before
    # Noise alone, std sigma*C / (q*N) * lr per coordinate and step, over 10 steps.
    expected = 0.5 * 1.0 / (q * len(y)) * np.sqrt(10)
    assert np.std(moved) == pytest.approx(expected, rel=0.15)


def test_poisson_batches_come_from_the_site_randomness_with_rate_q():
    batches = list(PoissonBatches(10_000, 0.01, SecureRandom()))
    assert len(batches) == 100
    sizes = np.array([len(b) for b in batches])
    assert sizes.mean() == pytest.approx(100, rel=0.05)
    seeded = [list(PoissonBatches(500, 0.1, SecureRandom(insecure_seed=s))) for s in (1, 1, 2)]
    assert seeded[0] == seeded[1] and seeded[0] != seeded[2]


def test_dp_training_noise_has_the_claimed_std():
    """All records, one step, huge noise: the update is -lr * noise / (q N), std sigma*C."""
    x, y = data(200)
    model = CNN1D(private=True)
    before = weights(model)
    sigma, clip, lr = 500.0, 1.0, 1.0
    train(
        model, x, y, epochs=1, batch_size=200, learning_rate=lr, rng=SecureRandom(),
        dp=DpSgd(sigma, clip, 1.0),
    )  # fmt: skip
    noise = (weights(model) - before) * len(y) / lr
    assert np.std(noise) == pytest.approx(sigma * clip, rel=0.05)


def test_a_resumed_run_plans_its_noise_for_the_rounds_that_remain(tmp_path):
    settings = RunSettings(num_rounds=4, dp=True, target_epsilon=8.0, batch_size=64, local_epochs=1)
    site = make_site("site-0", tmp_path, {"max-epsilon": 10.0}, partition_id=0, num_partitions=1)
    records = 900

    def run_rounds(rounds: range, state: RecordDict, run_id: str) -> float:
        with SiteBudget.open(site, settings, state) as budget:
            sigmas = []
            for server_round in rounds:
                dp, event = budget.plan_training(server_round, records)
                reservation = Reservation(run_id, server_round, "train", event)
                budget.reserve(reservation)
                commit(budget.ledger, reservation)
                sigmas.append(dp.noise_multiplier)
            assert len(set(sigmas)) == 1
            return sigmas[0]

    planned = run_rounds(range(1, 3), RecordDict(), "first")
    resumed = run_rounds(range(3, 5), RecordDict(), "resumed")  # a new run: a fresh state
    assert resumed == pytest.approx(planned, abs=0.01)
    with SiteBudget.open(site, settings, RecordDict()) as budget:
        epsilon = compute_epsilon(spent_events(budget.ledger), site.delta)
    assert 7.9 < epsilon <= 8.0
