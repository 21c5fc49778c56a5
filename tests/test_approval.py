"""The build hash a site approves is the hash of the FAB Flower builds from the same source."""

from __future__ import annotations

import shutil
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from client.approval import app_build_hash, app_files, build_hash, stage_app

REPO = Path(__file__).resolve().parents[1]


DROPPED = [
    ".venv/lib/site.py",
    ".flwr/config.toml",
    "__pycache__/app.py",
    "server/__pycache__/app.py",
    "runs/metrics.json",
    "server/run.log",
]
KEPT = ["server/.venv/kept.py", "docs/.flwr/kept.toml", "tools/build/kept.py"]


def an_app(tmp_path: Path) -> Path:
    """An app with a virtualenv, caches, ignored files, and links inside and out."""
    app = tmp_path / "app"
    (app / "server").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", app)
    (app / ".gitignore").write_text("runs/\n*.log\n")
    (app / "server" / "app.py").write_text("APP = 1\n")
    (app / "README.md").write_text("# app\n")
    for name in DROPPED + KEPT:
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text("X = 1\n")
    (app / "server" / "linked.py").symlink_to(app / "server" / "app.py")
    (app / "outside.py").symlink_to(tmp_path / "elsewhere.py")
    (tmp_path / "elsewhere.py").write_text("Y = 1\n")
    return app


def test_the_hash_is_flowers_with_a_virtualenv_caches_and_links_in_the_app(tmp_path):
    app = an_app(tmp_path)
    assert app_build_hash(app) == build_hash(build_fab_from_disk(app))
    walked = app_files(app)
    assert not {".venv/lib/site.py", ".flwr/config.toml", "server/__pycache__/app.py"} & set(walked)
    assert set(KEPT) <= set(walked)
    assert "server/linked.py" not in walked and "outside.py" not in walked


def test_flower_builds_the_same_fab_from_the_staged_copy(tmp_path):
    app = an_app(tmp_path)
    staged = stage_app(app, tmp_path / "staged")
    assert build_hash(build_fab_from_disk(staged)) == build_hash(build_fab_from_disk(app))
    assert not (staged / ".venv").exists() and not (staged / "runs").exists()


def test_a_change_to_a_kept_file_changes_the_hash(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(REPO / "pyproject.toml", app)
    (app / "server").mkdir()
    (app / "server" / "app.py").write_text("APP = 1\n")
    before = app_build_hash(app)
    (app / "server" / "app.py").write_text("APP = 2\n")
    after = app_build_hash(app)
    assert after != before
    assert after == build_hash(build_fab_from_disk(app))
