"""Random secrets a party keeps in its state directory: created once, 0600, never replaced.

A site's pseudonymization key and its split key are 32 random bytes that must outlive every
run (the same key gives the same pseudonyms and the same validation rows next time) and
must never be readable by anyone else. `load_or_create_secret` creates the file atomically
with `os.link`, so two processes starting at once end up with one secret, not two, and
refuses a file that other users can read or that has the wrong length.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from privacy.errors import FedVaultError

SECRET_BYTES = 32


def load_or_create_secret(path: str | os.PathLike[str], what: str) -> bytes:
    """The secret at `path` (`what` names it in errors), created from os.urandom if absent."""
    path = Path(path)
    if not path.exists():
        _create(path, what)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        secret = path.read_bytes()
    except OSError as exc:
        raise FedVaultError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if mode & 0o077:
        raise FedVaultError(
            f"{what} {path} is readable by others (mode {mode:04o}); run chmod 600 on it"
        )
    if len(secret) != SECRET_BYTES:
        raise FedVaultError(f"{what} {path} is not a {SECRET_BYTES}-byte key")
    return secret


def _create(path: Path, what: str) -> None:
    """Write a fresh secret without ever replacing one another process wrote meanwhile."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise FedVaultError(f"cannot create directory {directory}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(SECRET_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError as exc:
        raise FedVaultError(f"cannot create {what} {path}: {exc.strerror or exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
