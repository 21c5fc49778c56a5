"""A checkpoint after every completed round, so a restarted server resumes where it stopped.

Flower has no run resume: a run in flight when the SuperLink restarts ends as failed. The
server therefore writes the global model, the optimizer's state (FedAdam's moments, or the
server momentum and iterate average of distributed DP-SGD) and the per-round metrics after
each round; `resume-run-id` continues that run directory from the last completed round.
Tensors go to safetensors (no pickle), the rest to JSON, and the JSON, written last, carries
the tensors' hash, so a torn checkpoint is detected, not loaded.
Privacy state needs no copy here: it is in the append-only ledgers, which are never rolled
back, so nothing spent in an interrupted round is forgotten.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from privacy.atomic import atomic_path, atomic_write_text
from privacy.errors import FedVaultError
from server.distributed_sgd import DistributedSgd

CHECKPOINT_DIR = "checkpoint"
STRATEGY_STATE = ("m_t", "v_t")  # a Flower strategy's arrays (FedOpt moments)
SGD_STATE = ("velocity", "average")  # distributed DP-SGD's server state (`DistributedSgd`)


@dataclass
class Checkpoint:
    """Everything the round loop needs to continue after `round`."""

    run_id: str
    round: int
    model: dict[str, torch.Tensor]
    metrics: list[dict] = field(default_factory=list)
    strategy: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def strategy_state(
    strategy: object, sgd: DistributedSgd | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """The optimizer arrays that evolve across rounds: FedOpt moments, or `sgd`'s momentum
    and iterate average."""
    state = {
        name: dict(getattr(strategy, name))
        for name in STRATEGY_STATE
        if getattr(strategy, name, None)
    }
    for name in SGD_STATE if sgd is not None else ():
        if getattr(sgd, name) is not None:
            state[name] = {"flat": getattr(sgd, name)}
    return state


def restore_strategy(
    strategy: object, state: dict[str, dict[str, np.ndarray]], sgd: DistributedSgd | None = None
) -> None:
    for name in STRATEGY_STATE:
        if name in state:
            setattr(strategy, name, state[name])
    for name in SGD_STATE if sgd is not None else ():
        if name in state:
            setattr(sgd, name, state[name]["flat"])


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    folder = run_dir / CHECKPOINT_DIR
    tensors = {f"model/{k}": v.detach().contiguous() for k, v in checkpoint.model.items()}
    for name, arrays in checkpoint.strategy.items():
        tensors.update(
            {f"{name}/{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        )
    with atomic_path(folder / "tensors.safetensors") as tmp:
        save_file(tensors, str(tmp))
    digest = hashlib.sha256((folder / "tensors.safetensors").read_bytes()).hexdigest()
    state = {
        "run-id": checkpoint.run_id,
        "round": checkpoint.round,
        "metrics": checkpoint.metrics,
        "tensors-sha256": digest,
    }
    atomic_write_text(folder / "state.json", json.dumps(state, indent=1) + "\n")


def load_checkpoint(run_dir: Path, run_id: str) -> Checkpoint:
    """The run's last checkpoint; refuses another run's, a torn or a missing one."""
    folder = run_dir / CHECKPOINT_DIR
    try:
        state = json.loads((folder / "state.json").read_text())
        blob = (folder / "tensors.safetensors").read_bytes()
    except FileNotFoundError:
        raise FedVaultError(f"no checkpoint in {run_dir} to resume from") from None
    except (OSError, ValueError) as exc:
        raise FedVaultError(f"unreadable checkpoint in {run_dir}: {exc}") from None
    if str(state.get("run-id")) != str(run_id):
        raise FedVaultError(
            f"{run_dir} holds run {state.get('run-id')}, not {run_id}; cannot resume it"
        )
    if hashlib.sha256(blob).hexdigest() != state.get("tensors-sha256"):
        raise FedVaultError(f"checkpoint in {run_dir} is damaged (tensor hash mismatch)")
    tensors = load_file(folder / "tensors.safetensors")
    model = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("model/")}
    strategy: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        name, _, array_key = key.partition("/")
        if name in (*STRATEGY_STATE, *SGD_STATE):
            strategy.setdefault(name, {})[array_key] = value.numpy()
    return Checkpoint(str(state["run-id"]), int(state["round"]), model, state["metrics"], strategy)
