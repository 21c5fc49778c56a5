"""A round of local DP-SGD as a plan: sampling rate, steps and noise, without torch.

The budget guard plans and accounts a round before any training (and a site's
secure-aggregation protocol stages check the budget without training at all), so the plan
lives apart from client/training.py, which needs torch and Opacus.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DpSgd:
    """The DP-SGD mechanism parameters for one round of local training."""

    noise_multiplier: float
    clip_norm: float
    sample_rate: float
    grad_sample_mode: str = "ew"


def poisson_plan(num_records: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Sampling rate and steps of a Poisson loader: q = 1/ceil(N/B), ceil(N/B) per epoch."""
    batches = -(-num_records // min(batch_size, num_records))
    return 1.0 / batches, epochs * batches
