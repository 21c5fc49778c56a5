"""Shared test set-up: offline Flower, a private dataset cache per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep generated datasets and signing keys out of the user's home during tests."""
    os.environ["FEDVAULT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["FEDVAULT_HOME"] = str(tmp_path_factory.mktemp("home"))
