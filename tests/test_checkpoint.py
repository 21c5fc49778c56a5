"""A checkpoint carries the optimizer's state, so a resumed run steps as if never stopped."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from privacy.distributed_noise import NoiseShares
from privacy.errors import FedVaultError
from server.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_strategy,
    save_checkpoint,
    strategy_state,
)
from server.distributed_sgd import DistributedSgd
from tasks.settings import RunSettings

SETTINGS = RunSettings(dp_mode="distributed", noise_multiplier=2.0, learning_rate=2.0)


class FedOptLike:
    """The attributes FedAdam keeps across rounds."""

    def __init__(self) -> None:
        self.m_t = None
        self.v_t = None


def released(values: list[float]) -> np.ndarray:
    """An integer sum as secure aggregation releases it, for a gradient sum of `values`."""
    s = SETTINGS
    shares = NoiseShares(s.noise_multiplier, s.clip_norm, 2, 0, len(values))
    return np.round(np.asarray(values) * shares.scale).astype(np.int64)


def test_a_resumed_distributed_run_keeps_its_momentum(tmp_path):
    start = {"w": torch.zeros(3)}
    steps = [released([3.0, -1.0, 0.5]), released([-2.0, 4.0, 1.0])]

    straight = DistributedSgd(SETTINGS)
    model = start
    for step in steps:
        model = straight.step(model, step, 2, 2)

    first = DistributedSgd(SETTINGS)
    halfway = first.step(start, steps[0], 2, 2)
    strategy = FedOptLike()
    strategy.m_t = {"w": np.ones(3)}
    save_checkpoint(tmp_path, Checkpoint("7", 1, halfway, [], strategy_state(strategy, first)))

    loaded = load_checkpoint(tmp_path, "7")
    resumed, fresh_strategy = DistributedSgd(SETTINGS), FedOptLike()
    restore_strategy(fresh_strategy, loaded.strategy, resumed)
    np.testing.assert_array_equal(resumed.velocity, first.velocity)
    np.testing.assert_array_equal(resumed.average, first.average)
    np.testing.assert_array_equal(fresh_strategy.m_t["w"], np.ones(3))
    assert fresh_strategy.v_t is None and not hasattr(fresh_strategy, "velocity")
    again = resumed.step(loaded.model, steps[1], 2, 2)
    torch.testing.assert_close(again["w"], model["w"])
    torch.testing.assert_close(resumed.released(again)["w"], straight.released(model)["w"])
    # Without the velocity the second step would differ: the test can tell them apart.
    forgetful = DistributedSgd(SETTINGS).step(loaded.model, steps[1], 2, 2)
    assert not torch.allclose(forgetful["w"], model["w"])


def test_the_released_model_is_the_moving_average_of_the_iterates():
    steps = [released([3.0, -1.0, 0.5]), released([-2.0, 4.0, 1.0]), released([1.0, 1.0, 1.0])]
    sgd = DistributedSgd(SETTINGS)
    iterates = [{"w": torch.tensor([1.0, 2.0, 3.0])}]
    for step in steps:
        iterates.append(sgd.step(iterates[-1], step, 2, 2))
    decay = SETTINGS.iterate_average
    average = iterates[0]["w"].double()
    for iterate in iterates[1:]:
        average = decay * average + (1 - decay) * iterate["w"].double()
    out = sgd.released(iterates[-1])
    torch.testing.assert_close(out["w"], average.float())
    assert not torch.allclose(out["w"], iterates[-1]["w"])
    # The iterate the sites train at is not touched by the average.
    last = DistributedSgd(dataclasses.replace(SETTINGS, iterate_average=0.0))
    model = iterates[0]
    for step in steps:
        model = last.step(model, step, 2, 2)
    torch.testing.assert_close(model["w"], iterates[-1]["w"])
    torch.testing.assert_close(last.released(model)["w"], model["w"])


def test_another_runs_or_a_damaged_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path, Checkpoint("7", 1, {"w": torch.zeros(2)}))
    with pytest.raises(FedVaultError, match="holds run 7, not 8"):
        load_checkpoint(tmp_path, "8")
    tensors = tmp_path / "checkpoint" / "tensors.safetensors"
    blob = tensors.read_bytes()
    tensors.write_bytes(blob[:-1] + bytes([blob[-1] ^ 0xFF]))
    with pytest.raises(FedVaultError, match="damaged"):
        load_checkpoint(tmp_path, "7")
