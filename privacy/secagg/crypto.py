"""Cryptographic building blocks of the protocol, each a thin layer over a vetted library.

- Key agreement: X25519 (`cryptography`), then HKDF-SHA256 with a label that binds the purpose
  (masking vs. encrypting shares), the session and the ordered pair of client ids, so a key
  never serves two purposes, two pairs or two rounds.
- Authenticated encryption of shares: Flower's `encrypt`/`decrypt` (Fernet: AES-CBC with
  HMAC-SHA256) over Flower's `share_keys_plaintext_concat` framing (source id, destination id,
  the two shares).
- Secret sharing: Flower's `create_shares`/`combine_shares` (Shamir over GF(2**128)), used
  directly by the client and server modules; `*_SHARE_BYTES` and `share_index` read its
  format.
- Mask expansion: an AES-256-CTR keystream (`cryptography`, AES-NI) read as uint64. It is a
  CSPRNG with a full 256-bit key, and the fastest option measured on 30k-element vectors
  (about 0.04 ms, vs. 0.09 ms for numpy's PCG64 and 0.19 ms for Flower's `pseudo_rand_gen`,
  which also folds its seed to 32 bits and so must not be used for masks).
"""

from __future__ import annotations

import base64
import hashlib

import numpy as np
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)

from privacy.secagg.errors import SecAggProtocolError

KEY_BYTES = 32
# Flower's Shamir pads a secret to whole 16-byte blocks, always adding at least one byte, and
# its cost grows with the number of blocks: a 31-byte (248-bit) self-mask seed takes two blocks
# where 32 bytes would take three, a third less work for the server's reconstructions.
SEED_BYTES = 31


def _share_bytes(secret_bytes: int) -> int:
    """Length of a Flower Shamir share: a 4-byte holder index, then one 16-byte block each."""
    return 4 + 16 * (secret_bytes // 16 + 1)


SEED_SHARE_BYTES = _share_bytes(SEED_BYTES)
KEY_SHARE_BYTES = _share_bytes(KEY_BYTES)
MASK_PURPOSE = b"pairwise-mask"
ENCRYPTION_PURPOSE = b"share-encryption"
_LABEL = b"fedvault/secagg/v1/"
_RAW = serialization.Encoding.Raw


def new_key_pair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as (private key, public key), 32 raw bytes each."""
    private = X25519PrivateKey.generate()
    secret = private.private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return secret, public_key_of(secret)


def public_key_of(private_key: bytes) -> bytes:
    """The public key of a raw X25519 private key."""
    try:
        key = X25519PrivateKey.from_private_bytes(private_key)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SecAggProtocolError("not a valid X25519 private key") from exc
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def _pair_info(purpose: bytes, session: str, a: int, b: int) -> bytes:
    low, high = sorted((a, b))
    sess = session.encode("utf-8")
    return b"".join(
        [
            _LABEL,
            purpose,
            len(sess).to_bytes(2, "big"),
            sess,
            low.to_bytes(8, "big"),
            high.to_bytes(8, "big"),
        ]
    )


def agree(
    private_key: bytes, peer_public_key: bytes, purpose: bytes, session: str, a: int, b: int
) -> bytes:
    """The 32-byte key clients `a` and `b` share for `purpose` in `session`."""
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public_key)
        raw = X25519PrivateKey.from_private_bytes(private_key).exchange(peer)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SecAggProtocolError(f"key agreement between {a} and {b} failed: {exc}") from exc
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=_pair_info(purpose, session, a, b),
    )
    return hkdf.derive(raw)


def prg(key: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """`length` uniform values modulo 2**modulus_bits expanded from a 32-byte key (uint64)."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = np.frombuffer(encryptor.update(bytes(8 * length)), dtype=np.uint64)
    if modulus_bits < 64:
        return stream & np.uint64((1 << modulus_bits) - 1)
    return stream.copy()


def self_mask(seed: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """The self mask PRG(b_u): the PRG keyed with SHA-256 of the (31-byte) seed."""
    return prg(hashlib.sha256(_LABEL + b"self-mask" + seed).digest(), length, modulus_bits)


def seal_shares(key: bytes, src: int, dst: int, seed_share: bytes, key_share: bytes) -> bytes:
    """Encrypt and authenticate the two shares `src` sends to `dst`."""
    plaintext = share_keys_plaintext_concat(src, dst, seed_share, key_share)
    return encrypt(base64.urlsafe_b64encode(key), plaintext)


def open_shares(key: bytes, ciphertext: bytes) -> tuple[int, int, bytes, bytes]:
    """Decrypt shares; (src, dst, seed share, key share). Tampering raises."""
    try:
        plaintext = decrypt(base64.urlsafe_b64encode(key), ciphertext)
    except (InvalidToken, ValueError, TypeError) as exc:
        raise SecAggProtocolError(
            "share ciphertext failed authentication (tampered or not meant for this client)"
        ) from exc
    return share_keys_plaintext_separate(plaintext)


def share_index(share: bytes) -> int:
    """The 1-based holder index Flower writes into the first 4 bytes of a share."""
    return int.from_bytes(share[:4], "little", signed=False)


def commit(session: str, client_id: int, seed: bytes) -> bytes:
    """Hash commitment to a self-mask seed, so the server can check its reconstruction."""
    sess = session.encode("utf-8")
    return hashlib.sha256(
        _LABEL
        + b"self-mask-commitment"
        + len(sess).to_bytes(2, "big")
        + sess
        + client_id.to_bytes(8, "big")
        + seed
    ).digest()
