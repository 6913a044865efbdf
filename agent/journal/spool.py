"""Spool files: a call's held journal writes, saved when the journal stayed unwritable.

A call that ends while its journal cannot be written (disk full, read-only, damaged, wrong key)
must not take what was said with it. Its held writes are saved here, encrypted under
ENCRYPTION_KEY with a salt of their own, written to a temporary name, fsynced and renamed, so a
spool file is either whole or absent. The first directory that accepts it wins: the journal's
own ``spool/`` directory, then the system's temporary directory (another filesystem when the
journal's disk is the one that is full). The worker's deliverer imports every spool file it
finds into the journal in one transaction, marks it imported in that same transaction (so a crash
between import and removal never imports it twice) and then removes it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.journal.crypto import InvalidTag, RecordCipher, new_salt

if TYPE_CHECKING:
    from agent.journal.call_journal import Held
    from agent.journal.store import JournalStore

log = structlog.get_logger(__name__)

SPOOL_SUFFIX = ".spool"
_AAD = b"never-silent-agent journal spool v1"


def spool_dirs(data_dir: str | Path) -> list[Path]:
    """Where spool files go, in order of preference (one definition for writer and reader);
    the temporary one is per data directory, so two journals never import each other's."""
    tag = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return [Path(data_dir) / "spool", Path(tempfile.gettempdir()) / f"never-silent-spool-{tag}"]


def save(call_id: str, writes: Sequence[Held], *, key: str, dirs: Sequence[Path]) -> Path | None:
    salt = new_salt()
    plain = json.dumps(
        {"call_id": call_id, "writes": [asdict(w) for w in writes]},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    blob = RecordCipher(key, salt).encrypt(plain, _AAD)
    body = json.dumps(
        {
            "format": 1,
            "salt": base64.b64encode(salt).decode(),
            "data": base64.b64encode(blob).decode(),
        }
    ).encode()
    name = f"{_safe(call_id)}-{os.urandom(4).hex()}{SPOOL_SUFFIX}"
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{name}.tmp"
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            final = d / name
            os.replace(tmp, final)
            return final
        except OSError as e:
            log.warning("spool directory refused the call's writes", dir=str(d), error=str(e))
            with contextlib.suppress(OSError):
                (d / f".{name}.tmp").unlink(missing_ok=True)
    return None


def load(path: Path, keys: Sequence[str]) -> tuple[str, list[Held]]:
    """The call and its writes; raises ValueError when no key reads the file."""
    from agent.journal.call_journal import Held

    body = json.loads(path.read_bytes())
    salt = base64.b64decode(body["salt"])
    blob = base64.b64decode(body["data"])
    for key in keys:
        try:
            plain = RecordCipher(key, salt).decrypt(blob, _AAD)
        except (InvalidTag, ValueError):
            continue
        doc: dict[str, Any] = json.loads(plain)
        return str(doc["call_id"]), [Held(**w) for w in doc["writes"]]
    raise ValueError(f"no configured key reads the spool file {path}")


def import_all(store: JournalStore, dirs: Sequence[Path], keys: Sequence[str]) -> int:
    """Import every readable spool file into ``store``; returns how many were imported."""
    from agent.journal.call_journal import apply

    imported = 0
    for d in dirs:
        try:
            paths = sorted(p for p in d.glob(f"*{SPOOL_SUFFIX}") if p.is_file())
        except OSError:
            continue
        for path in paths:
            try:
                call_id, writes = load(path, keys)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("spool file cannot be read; left in place", spool=str(path), error=str(e))
                continue
            with store.transaction():
                if store.mark_imported(f"spool:{path.name}"):
                    for write in writes:
                        apply(store, call_id, write)
            with contextlib.suppress(OSError):
                path.unlink()
            imported += 1
            log.warning(
                "spooled call writes imported into the journal",
                call_id=call_id,
                writes=len(writes),
                spool=str(path),
            )
    return imported


def _safe(call_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in call_id)[:80]
