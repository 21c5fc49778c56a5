"""A site's part of one distributed DP-SGD step: its clipped gradient sum at the global model.

The site draws its Poisson batch from its own CSPRNG at its own rate, computes every
example's gradient (torch.func: a vmap of the per-example gradient), clips each to C and
sums them. Nothing else of the batch leaves: not its size, not a loss. The sum goes, with
the site's noise share added (privacy/distributed_noise.py), into secure aggregation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from privacy.randomness import SecureRandom
from tasks.wire import float_keys

CHUNK = 1024  # examples per vmap call: bounds the memory of per-example gradients


def clipped_gradient_sum(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    sample_rate: float,
    clip_norm: float,
    rng: SecureRandom,
) -> np.ndarray:
    """Sum over a Poisson sample of (x, y) of each example's gradient clipped to `clip_norm`.

    One float64 vector over the model's floating-point state in state-dict order (the order
    updates travel in, tasks/wire.py); entries that are not parameters stay zero.
    """
    from torch.func import functional_call, grad, vmap

    state = model.state_dict()
    keys = float_keys(state)
    params = {name: p.detach() for name, p in model.named_parameters()}
    sizes = [state[k].numel() for k in keys]
    total = torch.zeros(sum(sizes), dtype=torch.float64)
    chosen = np.flatnonzero(rng.bernoulli(len(x), sample_rate))
    if not chosen.size:
        return total.numpy()
    model.eval()

    def loss(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    xs, ys = torch.from_numpy(np.asarray(x)[chosen]), torch.from_numpy(np.asarray(y)[chosen])
    for start in range(0, len(chosen), CHUNK):
        grads = per_example(params, xs[start : start + CHUNK], ys[start : start + CHUNK])
        n = len(next(iter(grads.values())))
        flat = torch.cat(
            [
                grads[k].reshape(n, -1).double()
                if k in grads
                else torch.zeros(n, state[k].numel(), dtype=torch.float64)
                for k in keys
            ],
            dim=1,
        )
        norms = flat.norm(dim=1, keepdim=True)
        factors = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
        total += (flat * factors).sum(dim=0)
    return total.numpy()
