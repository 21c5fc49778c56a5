"""The run directory: config used, per-round metrics (JSON and CSV), final model, status.

`status.json` says `running` from the first moment and `completed` only after the final model
and metrics are in place, so a crashed or interrupted run never looks complete. Every file is
written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from privacy.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from privacy.errors import FedVaultError
from privacy.identity import ROSTER_FILE, Roster

STATUS_FILE = "status.json"


class RunDirectory:
    """Writes one run's outputs under `path`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rounds: list[dict] = []

    def start(self, config: dict, run_id: str, resumed: bool = False) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.set_status("running", run_id=run_id, resumed=resumed)
        if not resumed:
            self.write_json("config.json", config)

    def check_resumable(self, config: dict) -> None:
        """A resumed run must be unfinished and keep the settings it started with."""
        status = json.loads((self.path / STATUS_FILE).read_text())
        if status["status"] == "completed":
            raise FedVaultError(f"run in {self.path} already completed; nothing to resume")
        before = json.loads((self.path / "config.json").read_text())
        changed = sorted(
            k
            for k in set(before) | set(config)
            if k != "resume-run-id" and before.get(k) != config.get(k)
        )
        if changed:
            raise FedVaultError(f"settings differ from the run being resumed: {', '.join(changed)}")

    def keep_roster(self, roster: Path) -> None:
        """A copy of the federation roster, so the report can check the sites' signatures."""
        Roster.load(roster)
        atomic_write_bytes(self.path / ROSTER_FILE, roster.read_bytes())

    def set_status(self, status: str, **details: object) -> None:
        self.write_json(STATUS_FILE, {"status": status, "time": _now(), **details})

    def write_json(self, name: str, data: object) -> None:
        atomic_write_text(self.path / name, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def add_round(self, metrics: dict) -> None:
        """Record one round's metrics and rewrite metrics.json / metrics.csv."""
        self.rounds.append(metrics)
        self.write_json("metrics.json", self.rounds)
        columns = sorted({key for row in self.rounds for key in row}, key=_column_order)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rounds)
        atomic_write_text(self.path / "metrics.csv", buffer.getvalue())

    def save_model(self, state_dict: dict[str, torch.Tensor], name: str = "model") -> None:
        """The model as safetensors and as a weights-only torch file."""
        tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
        with atomic_path(self.path / f"{name}.safetensors") as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(self.path / f"{name}.pt") as tmp:
            torch.save(tensors, tmp)


def _column_order(key: str) -> tuple[int, str]:
    return (0 if key == "round" else 1, key)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
