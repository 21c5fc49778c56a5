"""DP-SGD overhead: one local epoch with Opacus against the same epoch without DP.

A site's round cost is dominated by local training, and under DP-SGD every step also
computes per-sample gradients (or their norms), clips and adds noise. How much that costs
depends on Opacus' grad_sample_mode, so each mode is timed side by side with plain SGD on
the same model, data and batch size, interleaved over several repetitions (the machine is
shared, so only same-repetition ratios are compared and the median ratio is reported).

A mode is only worth making the default if it computes the same thing, so the script first
checks every mode against an explicit per-example loop: per-sample gradient norms and the
clipped, averaged gradient of one noiseless step must agree.

    python -m benchmarks.dp_overhead       # batch 32 and 512, 7 repetitions
    python -m benchmarks.dp_overhead --batch-sizes 512 --private-model
    python -m benchmarks.dp_overhead --batch-sizes 512 --private-model --records 9000
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks.datasets import load_mnist1d
from tasks.models import CNN1D

MODES = ("hooks", "functorch", "ew", "ghost")
SITE_RECORDS = 1800
POOL_RECORDS = 20000
CLIP_NORM = 1.0


def make_model(private: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return CNN1D(private=private)


def _private(
    model: nn.Module, loader: DataLoader, mode: str, *, lr: float, sigma: float, poisson: bool
) -> tuple[nn.Module, torch.optim.Optimizer, Callable, DataLoader]:
    """Wrap (model, SGD, loader) with Opacus as client.training does; add ghost's criterion."""
    from opacus import PrivacyEngine

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9 if poisson else 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=CLIP_NORM,
            poisson_sampling=poisson,
            grad_sample_mode=mode,
            criterion=nn.CrossEntropyLoss(),
        )
    if mode == "ghost":
        module, dp_optimizer, criterion, dp_loader = wrapped
        return module, dp_optimizer, criterion, dp_loader
    module, dp_optimizer, dp_loader = wrapped
    return module, dp_optimizer, nn.functional.cross_entropy, dp_loader


def time_epoch(
    private: bool, x: torch.Tensor, y: torch.Tensor, batch_size: int, mode: str | None
) -> float:
    """Seconds for one local epoch (Opacus wrapping included), as a site's round runs it."""
    model = make_model(private)
    start = time.perf_counter()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    if mode is None:
        module, criterion = model, nn.functional.cross_entropy
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        module, optimizer, criterion, loader = _private(
            model, loader, mode, lr=0.05, sigma=1.0, poisson=True
        )
    module.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for xb, yb in loader:
            if len(xb) == 0:
                continue
            optimizer.zero_grad()
            loss = criterion(module(xb), yb)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def reference_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """Per-sample gradient norms and the clipped mean gradient, one example at a time."""
    norms, clipped = [], [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        norms.append(norm)
        scale = min(1.0, CLIP_NORM / (norm.item() + 1e-6))
        scaled = [g * scale for g in grads]
        clipped = [c + s for c, s in zip(clipped, scaled, strict=True)]
    return torch.stack(norms), [c / len(x) for c in clipped]


def check_mode(private: bool, x: torch.Tensor, y: torch.Tensor, mode: str) -> tuple[float, float]:
    """Max relative error of the mode's per-sample norms and clipped gradient vs the loop."""
    ref_norms, ref_grad = reference_step(make_model(private), x, y)
    model = make_model(private)
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    module, optimizer, criterion, loader = _private(
        model, loader, mode, lr=1.0, sigma=0.0, poisson=False
    )
    xb, yb = next(iter(loader))
    optimizer.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        criterion(module(xb), yb).backward()
    if mode == "ghost":
        norms = module.per_sample_gradient_norms
    else:
        per_param = [p.grad_sample.flatten(1).norm(dim=1) for p in model.parameters()]
        norms = torch.stack(per_param, dim=1).norm(dim=1)
    optimizer.step()
    step = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]
    norm_err = ((norms - ref_norms).abs() / ref_norms).max().item()
    grad_err = max(((s - r).norm() / r.norm()).item() for s, r in zip(step, ref_grad, strict=True))
    return norm_err, grad_err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repetitions")
    parser.add_argument(
        "--private-model",
        action="store_true",
        help="the DP variant of CNN1D (16 channels, tanh) instead of the plain one",
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--records",
        type=int,
        default=SITE_RECORDS,
        help=f"records in the site's epoch (default {SITE_RECORDS}, at most {POOL_RECORDS})",
    )
    args = parser.parse_args(argv)
    if not 16 <= args.records <= POOL_RECORDS:
        parser.error(f"--records must be between 16 and {POOL_RECORDS}")
    torch.set_num_threads(args.threads)

    data = load_mnist1d(POOL_RECORDS, 5000, 0)
    x = torch.from_numpy(data.x_train[: args.records])
    y = torch.from_numpy(data.y_train[: args.records])
    params = sum(p.numel() for p in make_model(args.private_model).parameters())
    print(f"CNN1D(private={args.private_model}): {params} parameters; {args.records} records")
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")

    print("| mode | max rel. err. per-sample norm | max rel. err. clipped gradient |")
    print("|---|---|---|")
    for mode in args.modes:
        norm_err, grad_err = check_mode(args.private_model, x[:16], y[:16], mode)
        print(f"| {mode} | {norm_err:.1e} | {grad_err:.1e} |")

    for batch_size in args.batch_sizes:
        times: dict[str | None, list[float]] = {m: [] for m in (None, *args.modes)}
        for mode in times:  # warm-up: first calls pay for imports and allocator growth
            time_epoch(args.private_model, x, y, batch_size, mode)
        for _ in range(args.repeats):
            for mode in times:
                times[mode].append(time_epoch(args.private_model, x, y, batch_size, mode))
        base = times[None]
        print(f"\nbatch {batch_size}, one epoch of {args.records} records, {args.repeats} reps")
        print("| mode | median s/epoch | median ratio DP / no DP |")
        print("|---|---|---|")
        print(f"| no DP | {statistics.median(base):.3f} | 1.00 |")
        for mode in args.modes:
            ratios = np.array(times[mode]) / np.array(base)
            median_s = statistics.median(times[mode])
            print(f"| {mode} | {median_s:.3f} | {float(np.median(ratios)):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
