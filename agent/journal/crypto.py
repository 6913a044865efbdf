"""Record encryption for the journal: AES-256-GCM under a key derived from ``ENCRYPTION_KEY``.

HKDF-SHA256 with a random per-journal salt turns the 32-character setting into the record key,
so two journals under the same setting do not share a key. Every record's associated data
names what it is (table and row identity), so a ciphertext moved to another row fails to
decrypt instead of being read as something else.

Where no ``ENCRYPTION_KEY`` is set, ``console`` and ``dev`` keep leads anyway: they create a key
file in ``DATA_DIR`` (:func:`ensure_key_file`, owner-only permissions) and every command that
runs on that data directory reads it (:func:`read_key_file`). ``start`` never creates one: a
production worker whose key lives only beside the journal it protects would lose both at once.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

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


KEY_FILE_NAME = "encryption.key"


def key_file(data_dir: str | Path) -> Path:
    return Path(data_dir) / KEY_FILE_NAME


def read_key_file(data_dir: str | Path) -> str | None:
    """The key kept in ``DATA_DIR/encryption.key``, or None when there is no such file.

    Raises :class:`JournalKeyError` for a file that is unreadable, malformed, or readable by
    other users (a key anyone on the machine can read protects nothing)."""
    path = key_file(data_dir)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise JournalKeyError(
            f"cannot read the key file {path} ({e.strerror}); fix its permissions or set "
            "ENCRYPTION_KEY"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise JournalKeyError(
            f"the key file {path} is readable by other users; run chmod 600 {path}"
        )
    if len(text) != KEY_CHARS:
        raise JournalKeyError(
            f"the key file {path} does not hold a {KEY_CHARS}-character key; restore it, or "
            "set ENCRYPTION_KEY"
        )
    return text


def ensure_key_file(data_dir: str | Path) -> tuple[str, bool]:
    """The key in ``DATA_DIR/encryption.key``, creating it (mode 0600) if missing.

    Returns ``(key, created)``. Creation is exclusive, so two processes starting at once on
    one data directory end up with the same key."""
    existing = read_key_file(data_dir)
    if existing is not None:
        return existing, False
    path = key_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(KEY_CHARS // 2)
    # Written whole under a private name, then linked into place: a reader never sees a
    # half-written key, and of two racing creators exactly one link succeeds.
    tmp = path.with_name(f".{KEY_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        again = read_key_file(data_dir)
        assert again is not None
        return again, False
    finally:
        tmp.unlink(missing_ok=True)
    return key, True


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
    "KEY_FILE_NAME",
    "InvalidTag",
    "JournalCorruptError",
    "JournalKeyError",
    "RecordCipher",
    "check_key",
    "ensure_key_file",
    "key_file",
    "new_salt",
    "read_key_file",
]
