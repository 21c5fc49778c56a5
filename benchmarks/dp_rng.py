"""The cost of drawing DP-SGD's randomness at the site, from the OS CSPRNG.

A site draws every Poisson batch and every noise vector from `SecureRandom` (os.urandom),
with Opacus' floating-point mitigation (four Gaussians summed and halved per coordinate):
client/training.py. The baseline is Opacus' own default path, `PrivacyEngine.make_private`
without secure mode, whose sampler and noise come from torch's generator (the one a run
setting used to seed). Both train one local epoch of the same model on the same records
with the same batch size and noise, interleaved over several repetitions on this shared
machine; only same-repetition ratios are compared and the median is reported.

    python -m benchmarks.dp_rng                      # 9,000 records, batch 512, 15 repetitions
    python -m benchmarks.dp_rng --records 1800 --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.dp_plan import DpSgd, poisson_plan
from client.training import train
from privacy.randomness import SecureRandom
from tasks.datasets import load_mnist1d
from tasks.models import CNN1D

SIGMA, CLIP, LEARNING_RATE, MODE = 1.0, 1.0, 1.0, "ew"


def opacus_default_epoch(x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """Seconds for one epoch through `PrivacyEngine.make_private` (torch's generator)."""
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    model = CNN1D(private=True)
    start = time.perf_counter()
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=batch_size
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
    module, optimizer, loader = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        poisson_sampling=True,
        grad_sample_mode=MODE,
    )
    module.train()
    for xb, yb in loader:
        optimizer.zero_grad()
        if len(xb):
            nn.functional.cross_entropy(module(xb), yb).backward()
        optimizer.step()
    return time.perf_counter() - start


def site_epoch(x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """Seconds for the same epoch as a site runs it: client.training.train, SecureRandom."""
    torch.manual_seed(0)
    model = CNN1D(private=True)
    q, _ = poisson_plan(len(y), batch_size, 1)
    start = time.perf_counter()
    train(
        model,
        x,
        y,
        epochs=1,
        batch_size=batch_size,
        learning_rate=LEARNING_RATE,
        momentum=0.9,
        rng=SecureRandom(),
        dp=DpSgd(SIGMA, CLIP, q, MODE),
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="One DP-SGD epoch with the site's CSPRNG against Opacus' default generator."
    )
    parser.add_argument("--records", type=int, default=9000, help="default 9000 (one site)")
    parser.add_argument("--batch-size", type=int, default=512, help="default 512")
    parser.add_argument("--repetitions", type=int, default=15, help="default 15")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_mnist1d(max(args.records, 1000), 1000, 0)
    x, y = data.x_train[: args.records], data.y_train[: args.records]
    site_epoch(x[:600], y[:600], args.batch_size)  # warm-up: imports, first allocations
    opacus_default_epoch(x[:600], y[:600], args.batch_size)
    ratios, base_times, site_times = [], [], []
    for _ in range(args.repetitions):
        base = opacus_default_epoch(x, y, args.batch_size)
        ours = site_epoch(x, y, args.batch_size)
        base_times.append(base)
        site_times.append(ours)
        ratios.append(ours / base)
    print(
        f"records {args.records}, batch {args.batch_size}, sigma {SIGMA}, mode {MODE}, "
        f"torch {torch.__version__}, 1 thread, {args.repetitions} repetitions"
    )
    print("| randomness | median seconds per epoch |")
    print("|---|---|")
    print(f"| Opacus default (torch generator) | {statistics.median(base_times):.3f} |")
    print(f"| site CSPRNG (os.urandom, masked noise) | {statistics.median(site_times):.3f} |")
    print(
        f"\nmedian same-repetition ratio CSPRNG / default: {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
