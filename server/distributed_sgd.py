"""The server's half of distributed DP-SGD: the released noisy gradient sum in, a step out.

Secure aggregation hands the server the integer sum of the sites' rounded, clipped gradient
sums and their noise shares; nothing per site. The server divides by the expected total
batch (contributors x batch-size: fixed by the run, never the realised batch, which it does
not learn and which would depend on the records), and takes an SGD step with momentum.
Momentum on the released sums is post-processing, so it costs no privacy.

The model the run evaluates and releases is an exponential moving average of the iterates
(`iterate-average`, decay 0.9), not the last one: each step carries fresh noise, and the last
iterate swings by a point or more from one step to the next, where the average does not
(docs/benchmarks.md). It is post-processing too. The sites keep computing gradients at the
raw iterate. The velocity and the average are checkpointed with the model after every step
(server/checkpoint.py), so a resumed run continues with them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from privacy.distributed_noise import NoiseShares
from tasks.settings import RunSettings
from tasks.wire import apply_update, flatten_state


class DistributedSgd:
    """Momentum SGD on the mean noisy gradient of each distributed step."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.velocity: np.ndarray | None = None
        self.average: np.ndarray | None = None

    def step(
        self,
        state: Mapping[str, torch.Tensor],
        released: np.ndarray,
        contributors: int,
        threshold: int,
    ) -> dict[str, torch.Tensor]:
        """The model after one step on the released sum of `contributors` sites."""
        s = self.settings
        shares = NoiseShares(
            s.noise_multiplier, s.clip_norm, threshold, s.dp_colluders, len(released)
        )
        return self.descend(state, shares.gradient_sum(released) / (contributors * s.batch_size))

    def descend(
        self, state: Mapping[str, torch.Tensor], gradient: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """The model after one momentum step along the mean `gradient`."""
        s = self.settings
        if self.velocity is None:
            self.velocity = np.zeros_like(gradient)
        self.velocity = s.momentum * self.velocity + gradient
        new = apply_update(state, -s.learning_rate * self.velocity)
        if self.average is None:
            self.average = flatten_state(state)
        decay = s.iterate_average
        self.average = decay * self.average + (1 - decay) * flatten_state(new)
        return new

    def released(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model to evaluate and release at iterate `state`: the average of the iterates."""
        if self.average is None:
            return dict(state)
        return apply_update(state, self.average - flatten_state(state))
