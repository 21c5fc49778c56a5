"""Privacy-utility table: test accuracy at per-site epsilon 1, 3 and 8, three ways.

`fedavg`: DP-SGD FedAvg with local noise (every site noises its own update). `distributed`:
distributed DP-SGD (one step per round, noise shares inside secure aggregation).
`pooled`: central DP-SGD on the union of the sites' records, the accuracy distributed
DP-SGD aims at. The last two are in benchmarks/sgd_rows.py, tuned on the validation rows.

The question a site operator asks is what a budget costs in accuracy, so every row trains
the same federation (mnist1d, 10 sites, IID or Dirichlet label skew) for the same rounds,
with sigma solved so that each site's cumulative epsilon over the whole run (PRV, delta
1e-5) is the target, and compares it with the non-private run. Sites train in-process, one
after the other, with `client.training.train` (Opacus, Poisson sampling) and the server's
weighted average, so the table takes minutes without Ray; epsilon is recomputed from the
events that actually ran, under both accountants.

    python -m benchmarks.privacy_utility          # full table, ~20 min on 2 cores
    python -m benchmarks.privacy_utility --quick  # IID, epsilon 3, 3 rounds
    python -m benchmarks.privacy_utility --rounds 5 --sites 5 --out table.md
    python -m benchmarks.privacy_utility --epsilons 3 --partitions iid --batch-size 1024 \
        --local-epochs 4                          # one DP setting against the tuned one
    python -m benchmarks.privacy_utility --methods distributed pooled --steps 500 1000
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from benchmarks.sgd_rows import SgdHyper, SgdRow, Split, tuned
from client.data import VALIDATION_FRACTION
from client.dp_plan import DpSgd, poisson_plan
from client.training import train
from privacy.accounting import PrivacyEvent, compute_epsilon, solve_noise_multiplier
from privacy.atomic import atomic_write_text
from privacy.randomness import SecureRandom
from tasks.datasets import Dataset, load_mnist1d, split_indices
from tasks.evaluation import evaluate
from tasks.models import CNN1D
from tasks.partition import partition_dirichlet, partition_iid

DELTA = 1e-5


@dataclass(frozen=True)
class Hyper:
    """Local-training hyperparameters of one row."""

    batch_size: int
    learning_rate: float
    momentum: float
    local_epochs: int
    clip_norm: float = 1.0
    server_momentum: float = 0.0
    """FedAvgM (Hsu et al. 2019): the server steps along a momentum of averaged updates."""
    server_learning_rate: float = 1.0


# Non-private rows keep the non-private defaults (CNN1D, 32 channels, ReLU); DP rows use the
# values tuned for DP-SGD: a smaller CNN1D with tanh ("tempered sigmoid", Papernot et al.
# 2021), large batches and momentum. DP-SGD's noise grows with the parameter count.
NON_PRIVATE = Hyper(batch_size=32, learning_rate=0.05, momentum=0.9, local_epochs=2)
DP_TUNED = Hyper(batch_size=512, learning_rate=1.0, momentum=0.9, local_epochs=2)
GRAD_SAMPLE_MODE = "ew"
ROUNDS = 10
NUM_TRAIN, NUM_TEST = 100000, 5000


def build_model(private: bool) -> nn.Module:
    """The task's model as FedVault builds it: the DP-SGD variant for DP rows."""
    return CNN1D(private=private)


@dataclass(frozen=True)
class Row:
    partition: str
    target: float | None
    accuracy: float
    epsilon_prv: float
    epsilon_rdp: float
    sigma: float
    seconds: float


def site_rows(
    data: Dataset, partition: str, num_sites: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each site's training rows after its validation split, as the ClientApp takes them,
    and the union of the validation rows (where hyperparameters are chosen)."""
    if partition == "iid":
        parts = partition_iid(len(data.y_train), num_sites, seed)
    else:
        alpha = float(partition.removeprefix("dirichlet-"))
        parts = partition_dirichlet(data.y_train, num_sites, alpha, seed)
    splits = [split_indices(len(rows), VALIDATION_FRACTION, seed + 1) for rows in parts]
    train = [rows[fit] for rows, (fit, _) in zip(parts, splits, strict=True)]
    return train, np.concatenate([rows[val] for rows, (_, val) in zip(parts, splits, strict=True)])


def server_step(
    current: dict[str, torch.Tensor],
    states: list[dict[str, torch.Tensor]],
    share: np.ndarray,
    velocity: dict[str, torch.Tensor],
    hyper: Hyper,
) -> dict[str, torch.Tensor]:
    """The next global model: FedAvg, or FedAvgM when `hyper.server_momentum` > 0.

    `velocity` is updated in place; with momentum 0 and server learning rate 1 the result is
    the weighted average of `states`.
    """
    stepped = {}
    for key, value in current.items():
        average = sum(w * state[key] for w, state in zip(share, states, strict=True))
        velocity[key] = hyper.server_momentum * velocity[key] + average - value
        stepped[key] = value + hyper.server_learning_rate * velocity[key]
    return stepped


def run_federation(
    data: Dataset,
    partition: str,
    sites: list[np.ndarray],
    rounds: int,
    hyper: Hyper,
    target: float | None,
    seed: int,
) -> Row:
    """FedAvg for `rounds`; with a target, each site's sigma is solved for the whole run."""
    plans = [poisson_plan(len(rows), hyper.batch_size, hyper.local_epochs) for rows in sites]
    sigmas = [0.0] * len(sites)
    if target is not None:
        sigmas = [solve_noise_multiplier(target, DELTA, q, n * rounds) for q, n in plans]
    torch.manual_seed(seed)
    global_model = build_model(target is not None)
    events: list[list[PrivacyEvent]] = [[] for _ in sites]
    velocity = {key: torch.zeros_like(value) for key, value in global_model.state_dict().items()}
    start = time.perf_counter()
    for server_round in range(rounds):
        states, weights = [], []
        for site, rows in enumerate(sites):
            model = build_model(target is not None)
            model.load_state_dict(global_model.state_dict())
            dp = None
            q = plans[site][0]
            if target is not None:
                dp = DpSgd(sigmas[site], hyper.clip_norm, q, grad_sample_mode=GRAD_SAMPLE_MODE)
            result = train(
                model,
                data.x_train[rows],
                data.y_train[rows],
                epochs=hyper.local_epochs,
                batch_size=hyper.batch_size,
                learning_rate=hyper.learning_rate,
                momentum=hyper.momentum,
                dp=dp,
                rng=SecureRandom(insecure_seed=seed + 1000 * server_round + site),
            )
            if dp is not None:
                events[site].append(
                    PrivacyEvent(
                        noise_multiplier=dp.noise_multiplier,
                        sample_rate=q,
                        steps=result.steps,
                        clip_norm=dp.clip_norm,
                    )
                )
            states.append(model.state_dict())
            weights.append(result.num_examples)
        share = np.asarray(weights, dtype=np.float64) / sum(weights)
        global_model.load_state_dict(
            server_step(global_model.state_dict(), states, share, velocity, hyper)
        )
    seconds = time.perf_counter() - start
    _, accuracy = evaluate(global_model, data.x_test, data.y_test)
    eps_prv = max((compute_epsilon(e, DELTA, "prv") for e in events if e), default=0.0)
    eps_rdp = max((compute_epsilon(e, DELTA, "rdp") for e in events if e), default=0.0)
    return Row(partition, target, accuracy, eps_prv, eps_rdp, max(sigmas), seconds)


FEDAVG_HEADER = "partition,target epsilon,test accuracy,epsilon PRV,epsilon RDP,sigma,seconds"
SGD_HEADER = (
    "method,partition,target epsilon,test accuracy,validation accuracy,steps,sigma,epsilon,s/step"
)


def markdown(rows: list[Row], rounds: int, num_sites: int) -> str:
    """The FedAvg (local noise) rows."""
    body = []
    for row in rows:
        if row.target is None:
            cells = [row.partition, "non-private", f"{row.accuracy:.1%}", "-", "-", "-"]
        else:
            cells = [row.partition, f"{row.target:g}", f"{row.accuracy:.1%}"]
            cells += [f"{row.epsilon_prv:.2f}", f"{row.epsilon_rdp:.2f}", f"{row.sigma:.3f}"]
        body.append([*cells, f"{row.seconds:.0f}"])
    caption = (
        f"mnist1d, {num_sites} sites, {rounds} rounds, delta {DELTA:g}, per-site epsilon over "
        "the whole run (add/remove adjacency, Poisson sampling)"
    )
    return table(caption, FEDAVG_HEADER, body)


def sgd_markdown(rows: list[SgdRow], num_sites: int, tried: int) -> str:
    """Distributed against pooled DP-SGD, each at the candidate its validation rows chose."""
    body = [
        [
            row.method,
            row.partition,
            f"{row.target:g}",
            f"{row.accuracy:.1%}",
            f"{row.validation_accuracy:.1%}",
            str(row.hyper.steps),
            f"{row.sigma:.3f}",
            f"{row.epsilon:.2f}",
            f"{row.seconds_per_step:.2f}",
        ]
        for row in rows
    ]
    caption = (
        f"mnist1d, {num_sites} sites, delta {DELTA:g}, RDP; each row the best of {tried} "
        "candidate(s) on the sites' validation rows"
    )
    return table(caption, SGD_HEADER, body)


def table(caption: str, header: str, body: list[list[str]]) -> str:
    """A markdown table (`header`: comma-separated) under its caption and the torch build."""
    names = header.split(",")
    lines = [f"{caption}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)", ""]
    lines += [f"| {' | '.join(names)} |", "|" + "---|" * len(names)]
    lines += [f"| {' | '.join(cells)} |" for cells in body]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Test accuracy of DP-SGD FedAvg on mnist1d at per-site epsilon 1, 3, 8."
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"default {ROUNDS}")
    parser.add_argument("--sites", type=int, default=10, help="default 10")
    parser.add_argument(
        "--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0], help="default 1 3 8"
    )
    parser.add_argument(
        "--partitions", nargs="+", default=["iid", "dirichlet-0.5"], help="iid, dirichlet-ALPHA"
    )
    parser.add_argument("--num-train", type=int, default=NUM_TRAIN, help=f"default {NUM_TRAIN}")
    parser.add_argument("--seed", type=int, default=0)
    for flag, kind, default in (
        ("batch-size", int, DP_TUNED.batch_size),
        ("local-epochs", int, DP_TUNED.local_epochs),
        ("learning-rate", float, DP_TUNED.learning_rate),
        ("server-momentum", float, DP_TUNED.server_momentum),
        ("server-learning-rate", float, DP_TUNED.server_learning_rate),
    ):
        parser.add_argument(
            f"--{flag}", type=kind, default=default, help=f"DP rows (default {default:g})"
        )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=["fedavg", "distributed", "pooled"],
        default=["fedavg", "distributed", "pooled"],
        help="fedavg (local noise), distributed, pooled (default all three)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[500, 1000],
        help="distributed and pooled: candidate step counts (default 500 1000)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="IID, epsilon 3 and non-private, 3 rounds"
    )
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epsilons, args.partitions, args.steps = 3, [3.0], ["iid"], [3]
    if any(steps < 1 for steps in args.steps):
        parser.error("--steps must be at least 1")
    for name in ("rounds", "sites", "num_train", "batch_size", "local_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(eps <= 0 for eps in args.epsilons):
        parser.error("--epsilons must be > 0")
    if args.learning_rate <= 0 or args.server_learning_rate <= 0:
        parser.error("learning rates must be > 0")
    if not 0 <= args.server_momentum < 1:
        parser.error("--server-momentum must be in [0, 1)")
    dp_hyper = replace(
        DP_TUNED,
        batch_size=args.batch_size,
        local_epochs=args.local_epochs,
        learning_rate=args.learning_rate,
        server_momentum=args.server_momentum,
        server_learning_rate=args.server_learning_rate,
    )
    torch.set_num_threads(1)

    data = load_mnist1d(args.num_train, NUM_TEST, args.seed)
    rows, sgd = [], []
    candidates = [SgdHyper(steps=steps) for steps in args.steps]
    for partition in args.partitions:
        if partition != "iid" and not partition.startswith("dirichlet-"):
            parser.error(f"unknown partition {partition!r}: use iid or dirichlet-ALPHA")
        sites, validation = site_rows(data, partition, args.sites, args.seed)
        split = Split(data, sites, validation, partition, args.seed)
        for method in ("distributed", "pooled"):
            # The pooled union holds the same records whatever the partition: one row.
            if method not in args.methods or (
                method == "pooled" and any(r.method == "pooled" for r in sgd)
            ):
                continue
            for target in args.epsilons:
                best, _ = tuned(method, split, target, candidates)
                sgd.append(best if method == "distributed" else replace(best, partition="any"))
        if "fedavg" not in args.methods:
            continue
        for target in (None, *args.epsilons):
            hyper = NON_PRIVATE if target is None else dp_hyper
            row = run_federation(data, partition, sites, args.rounds, hyper, target, args.seed)
            print(
                f"{partition} eps={target}: acc {row.accuracy:.4f} prv {row.epsilon_prv:.3f} "
                f"rdp {row.epsilon_rdp:.3f} sigma {row.sigma:.3f} {row.seconds:.0f}s",
                flush=True,
            )
            rows.append(row)
    table = markdown(rows, args.rounds, args.sites) if rows else ""
    if sgd:
        table += ("\n" if table else "") + sgd_markdown(sgd, args.sites, len(candidates))
    print("\n" + table)
    if args.out:
        atomic_write_text(args.out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
