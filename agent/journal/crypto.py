"""Record encryption for the journal: AES-256-GCM under a key derived from ``ENCRYPTION_KEY``.

HKDF-SHA256 with a random per-journal salt turns the 32-character setting into the record key,
so two journals under the same setting do not share a key. Every record's associated data
names what it is (table and row identity), so a ciphertext moved to another row fails to
decrypt instead of being read as something else.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_CHARS = 32
SALT_BYTES = 16
NONCE_BYTES = 12
_INFO = b"never-silent-agent journal v1"


class JournalKeyError(Exception):
    """ENCRYPTION_KEY is missing, malformed or not the key this journal was written with."""


class JournalCorruptError(Exception):
    """A record failed authentication although the key matched the journal."""


def check_key(key: str | None) -> bytes:
    if not key:
        raise JournalKeyError(
            "ENCRYPTION_KEY is not set: the call journal needs a 32-character key "
            "(for example: python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    if len(key) != KEY_CHARS:
        raise JournalKeyError(
            f"ENCRYPTION_KEY must be exactly {KEY_CHARS} characters (got {len(key)})"
        )
    return key.encode("utf-8")


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


class RecordCipher:
    def __init__(self, key: str, salt: bytes) -> None:
        material = check_key(key)
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(material)
        self._aead = AESGCM(derived)

    def __repr__(self) -> str:
        return "RecordCipher(<key hidden>)"

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        """Raises :class:`cryptography.exceptions.InvalidTag` on a wrong key or tampering."""
        return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


__all__ = [
    "KEY_CHARS",
    "InvalidTag",
    "JournalCorruptError",
    "JournalKeyError",
    "RecordCipher",
    "check_key",
    "new_salt",
]
