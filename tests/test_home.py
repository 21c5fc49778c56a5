"""One FEDVAULT_HOME for every command: the site's state and the report's signing key."""

from __future__ import annotations

from pathlib import Path

from cli.anonymize import default_state_dir
from privacy.home import fedvault_home
from privacy.report.signing import default_signing_key


def test_every_default_lives_under_the_one_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDVAULT_HOME", str(tmp_path / "elsewhere"))
    assert fedvault_home() == tmp_path / "elsewhere"
    assert default_state_dir() == fedvault_home() / "site"
    assert default_signing_key() == fedvault_home() / "server" / "signing.key"
    monkeypatch.setenv("FEDVAULT_HOME", "")  # set but empty: the documented default
    assert fedvault_home() == Path.home() / ".fedvault"
    monkeypatch.delenv("FEDVAULT_HOME")
    assert fedvault_home() == Path.home() / ".fedvault"
