"""Shared test set-up: offline Flower, a private dataset cache per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# The longest files, longest first (about 6 to 1 min each on 2 cores). Started first, they
# spread over the parallel workers (`make test`) instead of leaving one of them at the end.
LONGEST_FIRST = (
    "test_deployment_e2e.py",
    "test_simulation_e2e.py",
    "test_readme_tour.py",
    "test_deployment_walkthrough.py",
    "test_distributed_dp_runs.py",
    "test_client_level_dp_runs.py",
    "test_hostile_coordinator.py",
    "test_deploy_cli.py",
    "test_site_autonomy_e2e.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep generated datasets and signing keys out of the user's home during tests."""
    os.environ["FEDVAULT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["FEDVAULT_HOME"] = str(tmp_path_factory.mktemp("home"))
