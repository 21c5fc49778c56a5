"""Task names mapped to their data loader and model, and the settings that select them.

Server and client both call `load_dataset` with the same `TaskSettings` (the server sends them
in every round's config), so both see identical splits without exchanging any data. torch and
pandas are imported only where a model is built or a table read: a site's secure-aggregation
protocol stages import this module and need neither.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from privacy.errors import FedVaultError
from tasks.datasets import Dataset, load_digits, load_mnist1d, split_indices

if TYPE_CHECKING:
    from torch import nn

    from tasks.tabular import Schema

TASKS = ("mnist1d", "digits", "tabular")


@dataclass(frozen=True)
class TaskSettings:
    """Which dataset, at which size and seed; for `tabular`, the CSV and schema text."""

    name: str = "mnist1d"
    num_train: int = 20000
    num_test: int = 5000
    seed: int = 0
    csv: str = ""
    schema: str = ""
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise FedVaultError(f"unknown task {self.name!r}: choose one of {', '.join(TASKS)}")
        if self.num_train < 1 or self.num_test < 1:
            raise FedVaultError("num-train and num-test must be positive")
        if not 0 < self.test_fraction < 1:
            raise FedVaultError("test-fraction must be between 0 and 1")
        if self.name == "tabular" and not (self.csv and self.schema):
            raise FedVaultError(
                "task 'tabular' needs a CSV file (--csv; e.g. from `fedvault data synth clinic`) "
                "and a schema (--schema)"
            )

    def to_config(self) -> dict[str, str | int | float]:
        return {f"task.{key.replace('_', '-')}": value for key, value in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> TaskSettings:
        prefix = "task."
        return cls(**{k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)})


@dataclass
class TabularDataset(Dataset):
    """A table's encoded arrays plus its raw training rows (for anonymization before use)."""

    schema: Schema | None = None
    train_table: object = None


def load_dataset(task: TaskSettings) -> Dataset:
    """The task's full training set and its held-out test set."""
    if task.name == "mnist1d":
        return load_mnist1d(task.num_train, task.num_test, task.seed)
    if task.name == "digits":
        return load_digits(task.seed, task.test_fraction)
    from tasks.tabular import Schema, read_csv

    schema = Schema.from_toml(task.schema)
    table = read_csv(task.csv)
    schema.check_columns(list(table.columns), task.csv)
    train, test = split_indices(len(table), task.test_fraction, task.seed)
    train_table = table.iloc[train].reset_index(drop=True)
    x_train, y_train = schema.encode(train_table, task.csv)
    x_test, y_test = schema.encode(table.iloc[test], task.csv)
    return TabularDataset(
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=len(schema.classes),
        groups={c: train_table[c].to_numpy() for c in train_table.columns},
        schema=schema,
        train_table=train_table,
    )


def load_site_table(task: TaskSettings, path: str | Path) -> TabularDataset:
    """A deployed site's own CSV, encoded with the shared schema (no server-side split)."""
    from tasks.tabular import Schema, read_csv

    schema = Schema.from_toml(task.schema)
    table = read_csv(path)
    x, y = schema.encode(table, str(path))
    return TabularDataset(
        x, y, x[:0], y[:0], num_classes=len(schema.classes), schema=schema, train_table=table
    )


def build_model(
    task_name: str, num_features: int, num_classes: int, private: bool = False
) -> nn.Module:
    """A fresh model for the task (same seed on every party gives the same weights).

    `private` selects the task's DP-SGD variant where it has one; server and sites both
    know from the run settings whether DP-SGD is on, so they build the same model.
    """
    from tasks.models import CNN1D, MLP, DigitsCNN

    if task_name == "mnist1d":
        return CNN1D(length=num_features, num_classes=num_classes, private=private)
    if task_name == "digits":
        return DigitsCNN(num_classes=num_classes)
    return MLP(num_features, num_classes)
