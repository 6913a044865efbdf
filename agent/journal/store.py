"""The journal file: calls, their records and the CRM outbox, in one SQLite database.

One file so that "the call ended" and "send its transcript" commit together. SQLite in WAL
mode with ``synchronous=FULL`` makes every commit durable before the call returns, and lets the
job processes of one machine (LiveKit runs each call in its own process) share the file.
Everything said on a call is encrypted per record (:mod:`agent.journal.crypto`); only ids,
timestamps, kinds and delivery states are in clear, so ``journal list`` works without the key.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.journal.crypto import (
    InvalidTag,
    JournalCorruptError,
    JournalKeyError,
    RecordCipher,
    check_key,
    new_salt,
)
from agent.journal.owner import current_owner, owner_alive

log = structlog.get_logger(__name__)

JOURNAL_FILENAME = "journal.sqlite3"
_KEY_CHECK = b"never-silent-agent journal key check"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    end_reason TEXT,
    owner TEXT,
    info BLOB
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_call ON records (call_id, seq);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    call_id TEXT,
    op TEXT NOT NULL,
    payload BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    maybe_sent INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    result TEXT,
    created_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
"""

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Record:
    seq: int
    call_id: str
    at: float
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class OutboxItem:
    id: int
    uid: str
    call_id: str | None
    op: str
    payload: dict[str, Any]
    state: str
    attempts: int
    next_attempt_at: float
    maybe_sent: bool
    last_error: str | None
    result: str | None


@dataclass(frozen=True)
class CallSummary:
    call_id: str
    started_at: float
    ended_at: float | None
    end_reason: str | None
    records: int
    outbox: dict[str, int]  # state -> count


@dataclass(frozen=True)
class NewOutboxItem:
    op: str
    payload: dict[str, Any]
    uid: str | None = None


class JournalStore:
    """Open (creating if needed) the journal at ``path``; ``encryption_key`` is ENCRYPTION_KEY.

    A key that does not match an existing journal raises :class:`JournalKeyError` before
    anything is written, so the file stays readable with the right key.
    """

    def __init__(self, path: str | Path, encryption_key: str | None) -> None:
        self.path = Path(path)
        check_key(encryption_key)
        assert encryption_key is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA busy_timeout=30000")
            self._cipher = self._open_cipher(encryption_key)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise
        self.owner = current_owner()

    @classmethod
    def in_dir(cls, data_dir: str | Path, encryption_key: str | None) -> JournalStore:
        return cls(Path(data_dir) / JOURNAL_FILENAME, encryption_key)

    def __repr__(self) -> str:
        return f"JournalStore({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- key -------------------------------------------------------------------------------
    def _open_cipher(self, key: str) -> RecordCipher:
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if has_meta:
            row = self._read_key_meta()
            if row is not None:
                return self._verify(key, *row)
        with self._tx(immediate=True):
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
            )
            row = self._read_key_meta()
            if row is not None:  # another process created it meanwhile
                return self._verify(key, *row)
            salt = new_salt()
            cipher = RecordCipher(key, salt)
            check = cipher.encrypt(_KEY_CHECK, b"meta:key_check")
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("salt", salt), ("key_check", check), ("format", b"1")],
            )
            log.info("journal created", path=str(self.path))
            return cipher

    def _read_key_meta(self) -> tuple[bytes, bytes] | None:
        rows = dict(
            self._db.execute("SELECT key, value FROM meta WHERE key IN ('salt','key_check')")
        )
        if "salt" in rows and "key_check" in rows:
            return bytes(rows["salt"]), bytes(rows["key_check"])
        return None

    def _verify(self, key: str, salt: bytes, check: bytes) -> RecordCipher:
        cipher = RecordCipher(key, salt)
        try:
            ok = cipher.decrypt(check, b"meta:key_check") == _KEY_CHECK
        except InvalidTag:
            ok = False
        if not ok:
            raise JournalKeyError(
                f"ENCRYPTION_KEY does not match the journal at {self.path}: it was written with "
                "another key. Nothing was changed; set ENCRYPTION_KEY back to the key the journal "
                "was created with (or move the file away to start a new journal, which leaves "
                "its undelivered items behind)."
            )
        return cipher

    # -- plumbing --------------------------------------------------------------------------
    @contextmanager
    def _tx(self, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _seal(self, data: dict[str, Any], aad: str) -> bytes:
        raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return self._cipher.encrypt(raw, aad.encode("utf-8"))

    def _open(self, blob: bytes, aad: str) -> dict[str, Any]:
        try:
            raw = self._cipher.decrypt(bytes(blob), aad.encode("utf-8"))
        except InvalidTag:
            raise JournalCorruptError(
                f"journal at {self.path}: record {aad} failed authentication (damaged file?)"
            ) from None
        value = json.loads(raw)
        assert isinstance(value, dict)
        return value

    # -- calls -----------------------------------------------------------------------------
    def begin_call(self, call_id: str, info: dict[str, Any] | None = None) -> None:
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO calls (call_id, started_at, owner, info) VALUES (?,?,?,?)",
                (call_id, time.time(), self.owner, self._seal(info or {}, f"call:{call_id}")),
            )

    def call_started_at(self, call_id: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT started_at FROM calls WHERE call_id=?", (call_id,)
            ).fetchone()
        return float(row[0]) if row else None

    def call_info(self, call_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute("SELECT info FROM calls WHERE call_id=?", (call_id,)).fetchone()
        if row is None or row[0] is None:
            return {}
        return self._open(row[0], f"call:{call_id}")

    def update_call_info(self, call_id: str, **fields: Any) -> dict[str, Any]:
        """Merge non-None ``fields`` into the call's (encrypted) info; returns the result."""
        with self._tx():
            row = self._db.execute("SELECT info FROM calls WHERE call_id=?", (call_id,)).fetchone()
            if row is None:
                raise KeyError(f"no call {call_id!r} in the journal at {self.path}")
            info = self._open(row[0], f"call:{call_id}") if row[0] is not None else {}
            info.update({k: v for k, v in fields.items() if v is not None})
            self._db.execute(
                "UPDATE calls SET info=? WHERE call_id=?",
                (self._seal(info, f"call:{call_id}"), call_id),
            )
            return info

    def append(self, call_id: str, kind: str, data: dict[str, Any]) -> int:
        """Durably append one record (committed and fsynced when this returns)."""
        with self._tx():
            cur = self._db.execute(
                "INSERT INTO records (call_id, at, kind, payload) VALUES (?,?,?,X'')",
                (call_id, time.time(), kind),
            )
            seq = int(cur.lastrowid or 0)
            self._db.execute(
                "UPDATE records SET payload=? WHERE seq=?",
                (self._seal(data, f"record:{call_id}:{seq}:{kind}"), seq),
            )
            return seq

    def records(self, call_id: str) -> list[Record]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, kind, payload FROM records WHERE call_id=? ORDER BY seq",
                (call_id,),
            ).fetchall()
        return [
            Record(seq, call_id, at, kind, self._open(p, f"record:{call_id}:{seq}:{kind}"))
            for seq, at, kind, p in rows
        ]

    def end_call(self, call_id: str, reason: str, then: Sequence[NewOutboxItem] = ()) -> bool:
        """Mark the call ended and queue its end-of-call work in one transaction.

        Returns False (and queues nothing) if the call had already ended.
        """
        with self._tx():
            cur = self._db.execute(
                "UPDATE calls SET ended_at=?, end_reason=? WHERE call_id=? AND ended_at IS NULL",
                (time.time(), reason, call_id),
            )
            if cur.rowcount != 1:
                return False
            for item in then:
                self._insert_outbox(call_id, item)
            return True

    def unfinished_calls_of_dead_owners(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT call_id, owner FROM calls WHERE ended_at IS NULL"
            ).fetchall()
        return [cid for cid, owner in rows if owner != self.owner and owner_alive(owner) is False]

    def calls(self) -> list[CallSummary]:
        with self._lock:
            calls = self._db.execute(
                "SELECT c.call_id, c.started_at, c.ended_at, c.end_reason,"
                " (SELECT COUNT(*) FROM records r WHERE r.call_id=c.call_id)"
                " FROM calls c ORDER BY c.started_at"
            ).fetchall()
            states = self._db.execute(
                "SELECT call_id, state, COUNT(*) FROM outbox GROUP BY call_id, state"
            ).fetchall()
        by_call: dict[str | None, dict[str, int]] = {}
        for cid, state, n in states:
            by_call.setdefault(cid, {})[state] = n
        return [
            CallSummary(cid, started, ended, reason, n, by_call.get(cid, {}))
            for cid, started, ended, reason, n in calls
        ]

    # -- outbox ----------------------------------------------------------------------------
    def _insert_outbox(self, call_id: str | None, item: NewOutboxItem) -> int | None:
        uid = item.uid or uuid.uuid4().hex
        cur = self._db.execute(
            "INSERT OR IGNORE INTO outbox (uid, call_id, op, payload, created_at)"
            " VALUES (?,?,?,?,?)",
            (
                uid,
                call_id,
                item.op,
                self._seal(item.payload, f"outbox:{uid}:{item.op}"),
                time.time(),
            ),
        )
        return int(cur.lastrowid) if cur.rowcount == 1 and cur.lastrowid else None

    def enqueue(self, call_id: str | None, item: NewOutboxItem) -> int | None:
        """Queue a CRM write durably. A repeated ``uid`` is ignored (returns None)."""
        with self._tx():
            return self._insert_outbox(call_id, item)

    def _item(self, row: tuple[Any, ...]) -> OutboxItem:
        (id_, uid, call_id, op, payload, state, attempts, next_at, maybe, err, result) = row
        return OutboxItem(
            id_,
            uid,
            call_id,
            op,
            self._open(payload, f"outbox:{uid}:{op}"),
            state,
            attempts,
            next_at,
            bool(maybe),
            err,
            result,
        )

    _COLS = (
        "id, uid, call_id, op, payload, state, attempts, next_attempt_at, maybe_sent,"
        " last_error, result"
    )

    def pending(self) -> list[OutboxItem]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLS} FROM outbox WHERE state=? ORDER BY id", (PENDING,)
            ).fetchall()
        return [self._item(r) for r in rows]

    def outbox(self, call_id: str | None = None) -> list[OutboxItem]:
        with self._lock:
            if call_id is None:
                rows = self._db.execute(f"SELECT {self._COLS} FROM outbox ORDER BY id").fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {self._COLS} FROM outbox WHERE call_id=? ORDER BY id", (call_id,)
                ).fetchall()
        return [self._item(r) for r in rows]

    def claim(self, item_id: int, lease_s: float) -> bool:
        """Take the delivery lease so no other process sends this item at the same time."""
        now = time.time()
        with self._tx():
            cur = self._db.execute(
                "UPDATE outbox SET lease_owner=?, lease_until=? WHERE id=? AND state=?"
                " AND (lease_until < ? OR lease_owner=?)",
                (self.owner, now + lease_s, item_id, PENDING, now, self.owner),
            )
            return cur.rowcount == 1

    def mark_maybe_sent(self, item_id: int, value: bool) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET maybe_sent=? WHERE id=?", (1 if value else 0, item_id)
            )

    def mark_delivered(self, item_id: int, result: str | None) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state=?, delivered_at=?, result=?, lease_until=0,"
                " attempts=attempts+1, last_error=NULL WHERE id=?",
                (DELIVERED, time.time(), result, item_id),
            )

    def mark_retry(
        self, item_id: int, error: str, next_attempt_at: float, *, maybe_sent: bool
    ) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET attempts=attempts+1, last_error=?, next_attempt_at=?,"
                " maybe_sent=?, lease_until=0 WHERE id=?",
                (error[:500], next_attempt_at, 1 if maybe_sent else 0, item_id),
            )

    def mark_failed(self, item_id: int, error: str) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state=?, attempts=attempts+1, last_error=?, lease_until=0"
                " WHERE id=?",
                (FAILED, error[:500], item_id),
            )
