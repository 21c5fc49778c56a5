"""Ed25519 signatures over report.json: who wrote the report, and that no byte changed since.

The server keeps one signing key in its state directory (PEM, 0600, encrypted at rest under
its passphrase: privacy/keystore.py) with its public half beside it (`.pub`), which it can
hand to reviewers. The signature covers the exact bytes of report.json; report.json names
the signer by the SHA-256 of its raw public key, so a reviewer who pins that key
(`--public-key`) also detects a report re-signed with another key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy.atomic import atomic_write_bytes
from privacy.errors import FedVaultError
from privacy.keystore import find_passphrase, load_private_key, private_key_bytes

ALGORITHM = "Ed25519"


def default_signing_key() -> Path:
    """$FEDVAULT_HOME/server/signing.key (FEDVAULT_HOME defaults to ~/.fedvault)."""
    home = Path(os.environ.get("FEDVAULT_HOME") or Path.home() / ".fedvault")
    return home / "server" / "signing.key"


def public_key_path(key_path: Path) -> Path:
    """Where the public half of the signing key at `key_path` lives: `<key_path>.pub`."""
    return key_path.with_name(key_path.name + ".pub")


def load_or_create_signing_key(
    path: str | Path, passphrase: bytes | None = None
) -> Ed25519PrivateKey:
    """The Ed25519 signing key at `path`; created (0600, PEM, public key beside it) if absent.

    Whoever holds it can sign a forged report, so a new key is encrypted under the passphrase
    (given, else the one in the environment `fedvault server` passes to the ServerApp), and
    an encrypted one needs it to load.
    """
    path = Path(path)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        secret = passphrase if passphrase is not None else find_passphrase()
        atomic_write_bytes(path, private_key_bytes(key, secret), mode=0o600)
        atomic_write_bytes(public_key_path(path), public_pem(key.public_key()))
        return key
    key = load_private_key(path, "signing key", passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise FedVaultError(f"signing key {path} is not an Ed25519 private key")
    if not public_key_path(path).exists():
        atomic_write_bytes(public_key_path(path), public_pem(key.public_key()))
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    """The public key as PEM SubjectPublicKeyInfo."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 hex of the raw public key: how report.json names its signer."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()


def signer_record(key: Ed25519PublicKey) -> dict[str, str]:
    """The `integrity.signature` block of report.json for a report signed with `key`."""
    return {
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(raw_public_key(key)).decode("ascii"),
        "public_key_sha256": fingerprint(key),
        "signed_file": "report.json",
        "signature_file": "report.sig",
        "encoding": "base64 of the 64-byte signature over the exact bytes of report.json",
    }


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (the `.pub` written beside the signing key)."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise FedVaultError(f"cannot read public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise FedVaultError(f"public key {path} is not an Ed25519 key")
    return key


def public_key_from_record(record: dict) -> Ed25519PublicKey:
    """The signer's public key as embedded in report.json."""
    try:
        raw = base64.b64decode(str(record["public_key"]), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise FedVaultError(f"report.json holds no valid signer public key ({exc})") from None


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The contents of report.sig for `data`: base64 signature and a newline."""
    return base64.b64encode(key.sign(data)) + b"\n"


def signature_valid(key: Ed25519PublicKey, data: bytes, signature_file: bytes) -> bool:
    """Whether report.sig contents `signature_file` is `key`'s signature over `data`."""
    try:
        key.verify(base64.b64decode(signature_file.strip(), validate=True), data)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True
