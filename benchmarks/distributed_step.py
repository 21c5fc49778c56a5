"""Cost of one distributed DP-SGD step with secure aggregation, against a plain step.

Both steps use the default scenario's settings and do the sites' real work at the global
model: each site's Poisson batch, its per-example gradients, clipping and sum
(`client.distributed_step`). The secure step then rounds the sum and adds the site's Skellam
share (`privacy.distributed_noise`), answers its step of an authenticated multi-step SecAgg+
session (`privacy.secagg.local.LocalSteps`, the real client and server), and the server
unmasks the sum and takes `DistributedSgd`'s step. The plain step adds the float sums and
takes the same momentum step. Everything runs in one process, steps alternating between the
two, so the ratio is compute only: no network, no Flower messages (docs/benchmarks.md gives
the federation's per-round time beside it). The one-off key agreement is timed on its own.

    python -m benchmarks.distributed_step              # 10 and 50 sites, 20 steps each
    python -m benchmarks.distributed_step --sites 10 --steps 5
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch

from client.distributed_step import clipped_gradient_sum
from privacy.distributed_noise import NoiseShares
from privacy.randomness import SecureRandom
from privacy.secagg.local import LocalSteps
from server.distributed_sgd import DistributedSgd
from simulations.scenario import load_scenario
from tasks.datasets import load_mnist1d
from tasks.models import CNN1D
from tasks.settings import RunSettings
from tasks.wire import update_length

logging.getLogger("privacy.secagg").setLevel(logging.ERROR)
RECORDS_PER_SITE = 9000
SETTINGS = RunSettings.from_config(load_scenario("default").run)


def site_gradients(model, data, rows, rngs) -> list[np.ndarray]:
    """Each site's clipped gradient sum at `model` (rate batch / records)."""
    s = SETTINGS
    return [
        clipped_gradient_sum(
            model,
            data.x_train[r],
            data.y_train[r],
            sample_rate=s.batch_size / len(r),
            clip_norm=s.clip_norm,
            rng=rng,
        )
        for r, rng in zip(rows, rngs, strict=True)
    ]


def measure(num_sites: int, steps: int, data) -> dict[str, float]:
    """Median seconds of a secure and a plain step at `num_sites`, and the key agreement."""
    torch.manual_seed(0)
    model = CNN1D(private=True)
    dim = update_length(model.state_dict())
    pick = np.random.default_rng(num_sites)
    rows = [
        pick.choice(len(data.y_train), RECORDS_PER_SITE, replace=False) for _ in range(num_sites)
    ]
    rngs = [SecureRandom() for _ in range(num_sites)]
    shares = NoiseShares(SETTINGS.noise_multiplier, SETTINGS.clip_norm, num_sites, 0, dim)
    start = time.perf_counter()
    session = LocalSteps(num_sites, dim)
    keys = time.perf_counter() - start
    secure_sgd, plain_sgd = DistributedSgd(SETTINGS), DistributedSgd(SETTINGS)
    secure_model, plain_model = model.state_dict(), model.state_dict()
    secure, plain = [], []
    for index in range(1, steps + 1):
        start = time.perf_counter()
        model.load_state_dict(secure_model)
        sums = site_gradients(model, data, rows, rngs)
        vectors = {
            c: shares.noisy_share(g, rng) for c, g, rng in zip(session.ids, sums, rngs, strict=True)
        }
        released = session.step(index, vectors)
        secure_model = secure_sgd.step(secure_model, released, num_sites, num_sites)
        secure.append(time.perf_counter() - start)

        start = time.perf_counter()
        model.load_state_dict(plain_model)
        total = np.sum(site_gradients(model, data, rows, rngs), axis=0)
        plain_model = plain_sgd.descend(plain_model, total / (num_sites * SETTINGS.batch_size))
        plain.append(time.perf_counter() - start)
    return {
        "secure": statistics.median(secure),
        "plain": statistics.median(plain),
        "keys": keys,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 50], help="default 10 50")
    parser.add_argument("--steps", type=int, default=20, help="steps per size (default 20)")
    args = parser.parse_args(argv)
    if args.steps < 1 or any(n < 2 for n in args.sites):
        parser.error("--steps must be >= 1 and every --sites value >= 2")
    torch.set_num_threads(1)
    data = load_mnist1d(100_000, 100, 0)
    print(
        f"mnist1d, {RECORDS_PER_SITE} records and batch {SETTINGS.batch_size} per site, "
        f"CNN1D (private), median of {args.steps} steps; torch {torch.get_num_threads()} thread"
    )
    print("| sites | plain step (s) | secure step (s) | ratio | key agreement (s, once) |")
    print("|---|---|---|---|---|")
    for n in args.sites:
        t = measure(n, args.steps, data)
        print(
            f"| {n} | {t['plain']:.3f} | {t['secure']:.3f} | {t['secure'] / t['plain']:.2f}x "
            f"| {t['keys']:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
