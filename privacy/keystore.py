"""Secrets at rest: the one place where FedVault encrypts and decrypts what a party keeps.

Everything a stolen disk (or backup) would give away is stored under a passphrase: the CA
key, the server's TLS key, the report signing key, a site's node key (its identity key too)
and a site's raw 32-byte secrets (pseudonym key, split key). Each file is the owner's alone
(0600, written atomically) and is never rewritten by a read, so a wrong passphrase or a
damaged file costs one error line and nothing else.

Two formats, one per kind of secret:

- Private keys are PEM. Encrypted, they are PKCS#8 under `cryptography`'s
  `BestAvailableEncryption` (PBES2 today: PBKDF2-HMAC-SHA256 and AES-256-CBC). OpenSSH's own
  key encryption would need the `bcrypt` package, which FedVault does not depend on, so an
  encrypted node key is PKCS#8 too; an unencrypted node key stays OpenSSH, the format Flower's
  SuperNode reads.
- A raw secret is its 32 bytes when unencrypted; encrypted, it is a small TOML file
  (`format = "fedvault-secret"`, `version = 1`): scrypt parameters `n`, `r`, `p` and `salt`
  derive 48 bytes from the passphrase; the first 32 are the AES-256-GCM key that encrypts the
  secret (`nonce`, `ciphertext` with its tag; every other field is authenticated as associated
  data), the last 16 are stored as `check`, which tells a wrong passphrase (check differs)
  from a damaged file (check matches, authentication fails). Values are base64.

The passphrase comes from `--passphrase-file FILE` where a command has it, else from the file
named by FEDVAULT_PASSPHRASE_FILE (a systemd credential, a file a KMS agent writes), else from
FEDVAULT_PASSPHRASE itself; a passphrase file holds it on its first line. Reading or lazily
creating a secret inside an app (ClientApp, ServerApp) finds it in the environment the app
inherited; a command that creates a new key file passes it explicitly.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import stat
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from privacy.atomic import atomic_write_bytes
from privacy.errors import FedVaultError

SECRET_BYTES = 32
PASSPHRASE_FILE_ENV = "FEDVAULT_PASSPHRASE_FILE"
PASSPHRASE_ENV = "FEDVAULT_PASSPHRASE"
PASSPHRASE_VARIABLES = (PASSPHRASE_FILE_ENV, PASSPHRASE_ENV)
PASSPHRASE_SOURCES = f"--passphrase-file, {PASSPHRASE_FILE_ENV} or {PASSPHRASE_ENV}"
SECRET_FORMAT = "fedvault-secret"
SECRET_VERSION = 1
SCRYPT_N = 2**15
"""About 60 ms and 32 MiB per derivation: a fresh ClientApp process opens two secrets."""
SCRYPT_R = 8
SCRYPT_P = 1
MAX_SCRYPT_MEMORY = 2**30
"""A damaged or hostile file may not make a reader allocate more than this."""
_KEY_BYTES = 32
_CHECK_BYTES = 16
_HEADER = "# FedVault encrypted secret: see privacy/keystore.py\n"


def find_passphrase(file: str | os.PathLike[str] | None = None) -> bytes | None:
    """The passphrase: from `file` (--passphrase-file), else FEDVAULT_PASSPHRASE_FILE, else
    FEDVAULT_PASSPHRASE; None when none is set (an empty variable counts as unset)."""
    if file is not None:
        return _read_passphrase_file(Path(file))
    if os.environ.get(PASSPHRASE_FILE_ENV):
        return _read_passphrase_file(Path(os.environ[PASSPHRASE_FILE_ENV]))
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode("utf-8")
    return None


def require_passphrase(file: str | os.PathLike[str] | None, purpose: str) -> bytes:
    """The passphrase (`find_passphrase`), or one line saying `purpose` needs one."""
    secret = find_passphrase(file)
    if secret is None:
        raise FedVaultError(
            f"no passphrase to encrypt {purpose}: give one with {PASSPHRASE_SOURCES}"
        )
    return secret


def passphrase_env(file: str | os.PathLike[str] | None) -> dict[str, str]:
    """Environment entries that let a child process, whatever its working directory, find
    the passphrase file (`--passphrase-file`, else FEDVAULT_PASSPHRASE_FILE); a passphrase
    in FEDVAULT_PASSPHRASE it inherits as it is."""
    named = file if file is not None else os.environ.get(PASSPHRASE_FILE_ENV)
    return {PASSPHRASE_FILE_ENV: str(Path(named).resolve())} if named else {}


def _read_passphrase_file(path: Path) -> bytes:
    lines = read_private_file(path, "passphrase file").splitlines()
    if not lines or not lines[0]:
        raise FedVaultError(f"passphrase file {path} is empty")
    return lines[0]


def _environment_passphrase(path: Path, what: str) -> bytes:
    secret = find_passphrase()
    if secret is None:
        raise FedVaultError(
            f"{what} {path} is encrypted: give its passphrase with {PASSPHRASE_SOURCES}"
        )
    return secret


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret file that users other than its owner can read or write."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise FedVaultError(f"cannot read {what} {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise FedVaultError(
            f"{what} {path} is accessible by other users (mode {mode:04o}); run chmod 600 on it"
        )


def read_file(path: Path, what: str) -> bytes:
    """The bytes of a key, certificate or secret file; one line naming it when it cannot be read."""
    if not path.is_file():
        raise FedVaultError(f"{what} not found: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FedVaultError(f"cannot read {what} {path}: {exc.strerror}") from None


def read_private_file(path: Path, what: str) -> bytes:
    """The bytes of a file only its owner may access; one line naming it otherwise."""
    data = read_file(path, what)
    check_private_file(path, what)
    return data


# Private keys (PEM, OpenSSH).


def private_key_bytes(
    key: PrivateKeyTypes,
    passphrase: bytes | None,
    plain_format: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> bytes:
    """`key` as PEM: PKCS#8 encrypted under `passphrase`, or unencrypted in `plain_format`
    (OpenSSH for a node key that Flower reads) when the passphrase is None."""
    if passphrase is None:
        return key.private_bytes(
            serialization.Encoding.PEM, plain_format, serialization.NoEncryption()
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def load_private_key(
    path: str | os.PathLike[str], what: str, passphrase: bytes | None = None
) -> PrivateKeyTypes:
    """The private key at `path`, encrypted (passphrase given, else from the environment) or
    not; `what` names it in errors."""
    return _open_key(Path(path), what, passphrase)[0]


def unencrypted_copy(
    path: str | os.PathLike[str],
    what: str,
    passphrase: bytes | None,
    plain_format: serialization.PrivateFormat,
) -> bytes | None:
    """The key at `path` unencrypted, for a program that reads key files without a passphrase
    (Flower's SuperLink and SuperNode, nginx); None when the file is unencrypted already."""
    key, encrypted = _open_key(Path(path), what, passphrase)
    return private_key_bytes(key, None, plain_format) if encrypted else None


def _parse_key(data: bytes, password: bytes | None) -> PrivateKeyTypes:
    if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        return serialization.load_ssh_private_key(data, password)
    return serialization.load_pem_private_key(data, password)


def _open_key(path: Path, what: str, passphrase: bytes | None) -> tuple[PrivateKeyTypes, bool]:
    """(key, whether it was encrypted). `cryptography` raises TypeError for exactly one case
    without a password: the key is encrypted. The format is checked before the mode, so a
    public key given by mistake is named as such."""
    data = read_file(path, what)
    try:
        key = _parse_key(data, None)
    except TypeError:
        key = None
    except (ValueError, UnsupportedAlgorithm):
        raise FedVaultError(
            f"cannot read {what} {path}: not a private key in PEM or OpenSSH format"
        ) from None
    check_private_file(path, what)
    if key is not None:
        return key, False
    secret = passphrase if passphrase is not None else _environment_passphrase(path, what)
    try:
        return _parse_key(data, secret), True
    except ValueError:
        raise FedVaultError(
            f"cannot decrypt {what} {path}: wrong passphrase, or the file is damaged"
        ) from None
    except UnsupportedAlgorithm:
        raise FedVaultError(
            f"cannot read {what} {path}: OpenSSH's key encryption needs the bcrypt package; "
            "remove it (ssh-keygen -p) and encrypt with `fedvault keys encrypt`"
        ) from None


# Raw 32-byte secrets.


def load_or_create_secret(
    path: str | os.PathLike[str], what: str, passphrase: bytes | None = None
) -> bytes:
    """The secret at `path` (`what` names it in errors), created from os.urandom if absent:
    encrypted under the passphrase (given, else the environment's), unencrypted if none.

    Creation uses `os.link`, so two processes starting at once end up with one secret.
    """
    path = Path(path)
    if not path.exists():
        _create(path, what, passphrase if passphrase is not None else find_passphrase())
    return load_secret(path, what, passphrase)


def load_secret(path: str | os.PathLike[str], what: str, passphrase: bytes | None = None) -> bytes:
    """The 32-byte secret at `path`: the bytes themselves, or decrypted from a secret file."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except OSError as exc:
        raise FedVaultError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if mode & 0o077:
        raise FedVaultError(
            f"{what} {path} is readable by others (mode {mode:04o}); run chmod 600 on it"
        )
    if len(data) == SECRET_BYTES:
        return data
    fields = _secret_fields(data, path, what)
    secret = passphrase if passphrase is not None else _environment_passphrase(path, what)
    return _decrypt(fields, secret, path, what)


def _create(path: Path, what: str, passphrase: bytes | None) -> None:
    """Write a fresh secret without ever replacing one another process wrote meanwhile."""
    directory = path.parent
    secret = os.urandom(SECRET_BYTES)
    data = secret if passphrase is None else _encrypt(secret, passphrase)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise FedVaultError(f"cannot create directory {directory}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=_KEY_BYTES + _CHECK_BYTES, n=n, r=r, p=p).derive(passphrase)


def _associated_data(fields: dict[str, Any]) -> bytes:
    header = {name: value for name, value in fields.items() if name != "ciphertext"}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")


def _encrypt(secret: bytes, passphrase: bytes) -> bytes:
    salt, nonce = os.urandom(16), os.urandom(12)
    derived = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    fields: dict[str, Any] = {
        "format": SECRET_FORMAT,
        "version": SECRET_VERSION,
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": _b64(salt),
        "check": _b64(derived[_KEY_BYTES:]),
        "cipher": "aes-256-gcm",
        "nonce": _b64(nonce),
    }
    ciphertext = AESGCM(derived[:_KEY_BYTES]).encrypt(nonce, secret, _associated_data(fields))
    return (_HEADER + tomli_w.dumps({**fields, "ciphertext": _b64(ciphertext)})).encode("ascii")


def _toml(data: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _secret_fields(data: bytes, path: Path, what: str) -> dict[str, Any]:
    """The fields of a secret file, checked for shape; one line naming what is wrong."""
    fields = _toml(data)
    if fields.get("format") != SECRET_FORMAT:
        raise FedVaultError(
            f"{what} {path} is not a {SECRET_BYTES}-byte key or a FedVault encrypted secret"
        )
    if fields.get("version") != SECRET_VERSION:
        raise FedVaultError(
            f"{what} {path} is a FedVault secret of version {fields.get('version')!r}; "
            f"this FedVault reads version {SECRET_VERSION}"
        )
    try:
        if (fields["kdf"], fields["cipher"]) != ("scrypt", "aes-256-gcm"):
            raise ValueError(f"unknown kdf or cipher {fields['kdf']!r}, {fields['cipher']!r}")
        n, r, p = (fields[name] for name in ("n", "r", "p"))
        if not all(type(v) is int and v > 0 for v in (n, r, p)) or n & (n - 1) or n < 2:
            raise ValueError("scrypt parameters are not positive integers (n a power of two)")
        if 128 * n * r * p > MAX_SCRYPT_MEMORY:
            raise ValueError("scrypt parameters ask for more than 1 GiB")
        for name in ("salt", "check", "nonce", "ciphertext"):
            base64.b64decode(fields[name], validate=True)
    except KeyError as exc:
        raise FedVaultError(f"{what} {path} is damaged: field {exc} is missing") from None
    except (TypeError, ValueError, binascii.Error) as exc:
        raise FedVaultError(f"{what} {path} is damaged: {exc}") from None
    return fields


def _decrypt(fields: dict[str, Any], passphrase: bytes, path: Path, what: str) -> bytes:
    raw = {name: base64.b64decode(fields[name]) for name in ("salt", "check", "nonce")}
    derived = _derive(passphrase, raw["salt"], fields["n"], fields["r"], fields["p"])
    if not hmac.compare_digest(derived[_KEY_BYTES:], raw["check"]):
        raise FedVaultError(f"cannot decrypt {what} {path}: wrong passphrase")
    try:
        secret = AESGCM(derived[:_KEY_BYTES]).decrypt(
            raw["nonce"], base64.b64decode(fields["ciphertext"]), _associated_data(fields)
        )
    except (InvalidTag, ValueError):
        raise FedVaultError(f"{what} {path} is damaged: it fails authentication") from None
    if len(secret) != SECRET_BYTES:
        raise FedVaultError(f"{what} {path} is damaged: it holds {len(secret)} bytes, not 32")
    return secret


# Both kinds.


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether the secret file at `path` (key or raw secret) is stored under a passphrase."""
    data = Path(path).read_bytes()
    if len(data) == SECRET_BYTES:
        return False
    try:
        _parse_key(data, None)
    except TypeError:
        return True
    except (ValueError, UnsupportedAlgorithm):
        return _toml(data).get("format") == SECRET_FORMAT
    return False


def encrypt_file(path: str | os.PathLike[str], what: str, passphrase: bytes) -> bool:
    """Rewrite the unencrypted key or secret at `path` encrypted (atomically, 0600); False if
    it already was encrypted. What it decrypts to stays the same, so nothing else changes."""
    path = Path(path)
    data = read_private_file(path, what)
    if is_encrypted(path):
        return False
    if len(data) == SECRET_BYTES:
        encrypted = _encrypt(data, passphrase)
    else:
        encrypted = private_key_bytes(load_private_key(path, what), passphrase)
    atomic_write_bytes(path, encrypted, mode=0o600)
    return True
