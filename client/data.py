"""A site's own training and validation rows.

In simulation every virtual site loads the shared dataset (cached per process) and keeps only
its partition; in deployment a site reads its own CSV. Either way the site holds back a
validation split of its rows, drawn from its own secret split key (`split.key` in its state
directory), never from a run setting: the coordinator cannot choose or learn which rows are
held back, and row i stays on its side of the split in every run, also when rows are
appended.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from client.request import SiteRequest
from client.site import Site
from privacy.errors import FedVaultError
from privacy.keystore import load_or_create_secret
from tasks.datasets import Dataset
from tasks.partition import (
    PartitionSpec,
    partition_by_column,
    partition_dirichlet,
    partition_iid,
)
from tasks.registry import TaskSettings, load_dataset, load_site_table

if TYPE_CHECKING:
    import pandas as pd

    from tasks.tabular import Schema

VALIDATION_FRACTION = 0.1
SPLIT_KEY_FILE = "split.key"


@dataclass(frozen=True)
class SiteData:
    """The arrays a site trains and validates on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_features: int
    num_classes: int


@functools.lru_cache(maxsize=4)
def cached_dataset(task: TaskSettings) -> Dataset:
    """The task's dataset, loaded once per process (Ray actors serve many rounds)."""
    return load_dataset(task)


@functools.lru_cache(maxsize=4)
def cached_partition(task: TaskSettings, partition: str, num_sites: int) -> list:
    """Row indices of every simulated site's share of the training set, once per process."""
    dataset, spec = cached_dataset(task), PartitionSpec.parse(partition)
    if spec.kind == "iid":
        return partition_iid(len(dataset.y_train), num_sites, task.seed)
    if spec.kind == "dirichlet":
        return partition_dirichlet(dataset.y_train, num_sites, spec.alpha, task.seed)
    if spec.column not in dataset.groups:
        raise FedVaultError(f"partition column {spec.column!r} is not a column of this task")
    return partition_by_column(dataset.groups[spec.column], num_sites)


def site_table(task: TaskSettings, site: Site, partition: str):
    """The raw table rows of a tabular site (before its anonymization policy)."""
    if not site.simulated:
        return load_site_table(task, site.data_path).train_table
    rows = cached_partition(task, partition, site.num_partitions)[site.partition_id]
    return cached_dataset(task).train_table.iloc[rows].reset_index(drop=True)


def load_site_data(task: TaskSettings, site: Site, partition: str, table=None) -> SiteData:
    """This site's train/validation arrays; `table` is its (anonymized) raw table if tabular."""
    if task.name == "tabular":
        schema = cached_schema(task.schema)
        x, y = schema.encode(table, site.data_path or site.name)
        num_features, num_classes = schema.num_features, len(schema.classes)
    elif site.simulated:
        dataset = cached_dataset(task)
        rows = cached_partition(task, partition, site.num_partitions)[site.partition_id]
        x, y = dataset.x_train[rows], dataset.y_train[rows]
        num_features, num_classes = dataset.num_features, dataset.num_classes
    else:
        raise FedVaultError(f"task {task.name!r} has no deployment data loader; use tabular")
    held_out = validation_rows(len(y), split_key(site))
    return SiteData(x[~held_out], y[~held_out], x[held_out], y[held_out], num_features, num_classes)


def split_key(site: Site) -> bytes:
    """The site's secret split key; derived from its seed in the seeded research mode."""
    if site.insecure_seed is not None:
        return hashlib.sha256(f"split/{site.insecure_seed}/{site.name}".encode()).digest()
    return load_or_create_secret(site.state_dir / SPLIT_KEY_FILE, "split key")


def validation_rows(num_rows: int, key: bytes) -> np.ndarray:
    """Which rows are held back: row i by the i-th uniform of a stream keyed by `key`."""
    stream = np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))
    return stream.random(num_rows) < VALIDATION_FRACTION


@functools.lru_cache(maxsize=4)
def cached_schema(text: str) -> Schema:
    """The shared schema, parsed once per process."""
    from tasks.tabular import Schema

    return Schema.from_toml(text)


@dataclass
class SiteRound:
    """A request, its site and the site's (policy-applied) data."""

    request: SiteRequest
    site: Site
    data: SiteData
    anonymization: dict = field(default_factory=dict)


def prepare(request: SiteRequest, site: Site) -> SiteRound:
    """Load the site's rows, after its anonymization policy if tabular."""
    task, partition = request.settings.task, request.settings.partition
    table, anonymization = None, {}
    if task.name == "tabular":
        table, anonymization = released_table(task, site, partition, _file_stamps(site))
    data = load_site_data(task, site, partition, table)
    return SiteRound(request, site, data, anonymization)


RECORDS_KEY = "train-records"


def training_records(request: SiteRequest, site: Site, state: RecordDict) -> int:
    """How many training rows the site holds, for setup's early budget check.

    Counting them means reading, cleansing and anonymizing the table in a fresh ClientApp
    process (seconds, every round), so the count is kept in the site's own run context while
    the source is unchanged: same task, partition and site settings, and the same size and
    modification time of the data, policy and split key files. No guarantee rests on it:
    masked input loads the rows itself and reserves the cost on their real count.
    """
    cached = state.get(RECORDS_KEY)
    if isinstance(cached, ConfigRecord) and cached.get("key") == _source_key(request, site):
        return int(cached["records"])
    records = len(prepare(request, site).data.y_train)
    # Keyed after loading: the first load may create the split key.
    state[RECORDS_KEY] = ConfigRecord({"key": _source_key(request, site), "records": records})
    return records


def _source_key(request: SiteRequest, site: Site) -> str:
    """A digest of everything the site's training rows are made from."""
    stamps = _file_stamps(site, str(site.state_dir / SPLIT_KEY_FILE))
    described = repr((request.settings.task, request.settings.partition, site, stamps))
    return hashlib.sha256(described.encode()).hexdigest()


def _file_stamps(site: Site, *more: str) -> tuple:
    """Path, size and modification time of the site's data and policy files (and `more`)."""
    stamps = []
    for source in (site.data_path, site.policy_path, *more):
        path = Path(source)
        if source and path.exists():
            info = path.stat()
            stamps.append((source, info.st_size, info.st_mtime_ns))
    return tuple(stamps)


@functools.lru_cache(maxsize=8)
def released_table(
    task: TaskSettings, site: Site, partition: str, stamps: tuple = ()
) -> tuple[pd.DataFrame, dict]:
    """The site's rows after its policy: computed once per process and reused every round
    while `stamps` (`_file_stamps`) say its files are unchanged: a site's ClientApp process
    lives across runs, and a table edited meanwhile is read afresh."""
    table = site_table(task, site, partition)
    if not site.policy_path:
        return table, {}
    from client.policy import apply_site_policy

    return apply_site_policy(table, site, cached_schema(task.schema))
