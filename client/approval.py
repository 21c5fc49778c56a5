"""Which app builds a site agreed to serve: an allow-list of build hashes in its state dir.

In Flower the coordinator submits the app (a FAB: a zip of the app's files), and every
site would run its ClientApp. A site that serves a build it never saw can be made to ignore
its budget or upload its rows, so a FedVault site serves only builds whose SHA-256 it
approved: the hash Flower itself computes over the FAB bytes, which `fedvault run` prints
and `fedvault approve --app DIR` recomputes from a copy of the released source (the build is
deterministic: fixed file dates, sorted files). The check runs in the site's own ClientApp
process (client/app_process.py), before any byte of the build is unpacked or imported.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import tomllib
from pathlib import Path

import tomli_w

from privacy.atomic import atomic_write_text
from privacy.errors import FedVaultError

APPROVED_FILE = "approved-apps.toml"
_HASH = re.compile(r"^[0-9a-f]{64}$")


class AppNotApproved(FedVaultError):
    """The coordinator submitted a build this site has not approved."""


def build_hash(content: bytes) -> str:
    """The SHA-256 hex of a FAB's bytes: how Flower and FedVault name a build."""
    return hashlib.sha256(content).hexdigest()


def app_build_hash(app_dir: str | Path) -> str:
    """The hash of the FAB Flower builds from an app directory (as `flwr run` submits it)."""
    from flwr.cli.build import build_fab_from_files

    path = Path(app_dir).expanduser().resolve()
    if not (path / "pyproject.toml").is_file():
        raise FedVaultError(f"{path} is not a Flower app (no pyproject.toml)")
    try:
        return build_hash(build_fab_from_files(app_files(path))[0])
    except (ValueError, OSError) as exc:
        raise FedVaultError(f"cannot build the app in {path}: {exc}") from None


# Directories whose every file Flower's publish rules drop (APP_PUBLISH_EXCLUDE_PATTERNS in
# flwr.supercore.constant: `.flwr/**`, `.venv/**`, `**/__pycache__/**`), before .gitignore
# or any include pattern is consulted.
_DROPPED_AT_TOP = frozenset({".flwr", ".venv"})
_DROPPED_ANYWHERE = "__pycache__"


def app_files(root: Path) -> dict[str, Path]:
    """What `flwr.cli.utils.collect_files` gives the FAB build, less files it would drop.

    Flower walks every file under the app, a virtualenv included (about 50,000 files, 10 s
    per build), and only then filters them. Not entering the directories the build drops
    whole leaves the same FAB (tests/test_approval.py). Otherwise as Flower does it: no
    symlink, nothing that resolves outside the app, relative POSIX paths.
    """
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        top = Path(dirpath) == root
        dirnames[:] = [
            name
            for name in dirnames
            if name != _DROPPED_ANYWHERE and not (top and name in _DROPPED_AT_TOP)
        ]
        for filename in filenames:
            path = Path(dirpath) / filename
            if path.is_symlink() or not path.resolve().is_relative_to(root):
                continue
            files[path.relative_to(root).as_posix()] = path
    return files


def stage_app(app_dir: str | Path, target: Path) -> Path:
    """Copy into `target` the files the app's FAB is built from; `target`.

    `flwr run` builds the FAB itself, from every file under the directory it is given: given
    this copy, it builds the same FAB (the same files, filtered by the same rules) without
    walking the app's virtualenv and caches.
    """
    from flwr.cli.utils import filter_paths_for_publish

    for name, source in filter_paths_for_publish(app_files(Path(app_dir).resolve())).items():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return target


def _normalise(value: str) -> str:
    digest = value.strip().lower().removeprefix("sha256:")
    if not _HASH.match(digest):
        raise FedVaultError(f"not an app build hash (64 hex digits): {value!r}")
    return digest


def approved_builds(state_dir: str | Path) -> dict[str, dict[str, str]]:
    """Approved build hash -> {approved, note}; empty if the site approved none."""
    path = Path(state_dir) / APPROVED_FILE
    if not path.exists():
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FedVaultError(f"cannot read {path}: {exc}") from None
    builds = raw.get("builds", {})
    if not isinstance(builds, dict) or not all(_HASH.match(str(k)) for k in builds):
        raise FedVaultError(f"{path}: [builds] must be keyed by 64-hex-digit hashes")
    return {str(k): dict(v) for k, v in builds.items()}


def approve(state_dir: str | Path, digest: str, note: str = "") -> str:
    """Add a build hash to the site's allow-list; the normalised hash."""
    digest = _normalise(digest)
    builds = approved_builds(state_dir)
    builds[digest] = {
        "approved": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "note": note,
    }
    _write(state_dir, builds)
    return digest


def revoke(state_dir: str | Path, digest: str) -> str:
    """Remove a build hash from the allow-list; FedVaultError if it was not on it."""
    digest = _normalise(digest)
    builds = approved_builds(state_dir)
    if digest not in builds:
        raise FedVaultError(f"build {digest} is not approved at this site")
    del builds[digest]
    _write(state_dir, builds)
    return digest


def check_build(state_dir: str | Path, content: bytes, site: str) -> str:
    """The build's hash if the site approved it; AppNotApproved otherwise."""
    digest = build_hash(content)
    if digest not in approved_builds(state_dir):
        raise AppNotApproved(
            f"site {site} refuses app build sha256:{digest}: it is not on the site's list of "
            f"approved builds (approve it there with `fedvault approve {digest}`)"
        )
    return digest


def _write(state_dir: str | Path, builds: dict[str, dict[str, str]]) -> None:
    path = Path(state_dir) / APPROVED_FILE
    atomic_write_text(path, tomli_w.dumps({"builds": builds}), mode=0o600)
