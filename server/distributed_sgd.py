"""The server's half of distributed DP-SGD: the released noisy gradient sum in, a step out.

Secure aggregation hands the server the integer sum of the sites' rounded, clipped gradient
sums and their noise shares; nothing per site. The server divides by the expected total
batch (contributors x batch-size: fixed by the run, never the realised batch, which it does
not learn and which would depend on the records), and takes an SGD step with momentum.
Momentum on the released sums is post-processing, so it costs no privacy. The velocity is
checkpointed with the model after every step (server/checkpoint.py), so a resumed run
continues with it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from privacy.distributed_noise import NoiseShares
from tasks.settings import RunSettings
from tasks.wire import apply_update


class DistributedSgd:
    """Momentum SGD on the mean noisy gradient of each distributed step."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.velocity: np.ndarray | None = None

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
        return apply_update(state, -s.learning_rate * self.velocity)
