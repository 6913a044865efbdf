"""The journal file: calls, their records and the CRM outbox, in one SQLite database.

One file so that "the call ended" and "send its transcript" commit together. SQLite in WAL
mode with ``synchronous=FULL`` makes every commit durable before the call returns, and lets the
job processes of one machine (LiveKit runs each call in its own process) share the file.
Everything said on a call is encrypted per record (:mod:`agent.journal.crypto`); only ids,
timestamps, kinds and delivery states are in clear, so ``journal list`` works without the key.

A record, call or outbox item that fails authentication (a damaged sector, a torn copy) is
*quarantined*: its raw bytes are moved to the ``quarantine`` table, counted and logged, and every
other item goes on being read and delivered. ``journal quarantine`` lists what was set aside.
Keys rotate without downtime: a store opened with ``previous_keys`` reads a journal written under
one of them and re-encrypts it under the current key in one transaction (:meth:`rekey`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
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
from agent.journal.metrics import QUARANTINED
from agent.journal.owner import CALL_LEASE_S, current_owner, owner_gone_here

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
    info BLOB,
    lease_until REAL NOT NULL DEFAULT 0
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
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    what TEXT NOT NULL,
    ref TEXT NOT NULL,
    call_id TEXT,
    reason TEXT NOT NULL,
    raw BLOB,
    at REAL NOT NULL
);
"""
# Columns added after the first release, for journals created before them.
_MIGRATIONS = (("calls", "lease_until", "REAL NOT NULL DEFAULT 0"),)

PENDING, DELIVERED, FAILED, QUARANTINED_STATE = "pending", "delivered", "failed", "quarantined"


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
    maybe_sent: bool = False  # a first attempt may already have applied it: look before sending


@dataclass(frozen=True)
class QuarantinedItem:
    id: int
    what: str  # "record", "call" or "outbox"
    ref: str
    call_id: str | None
    reason: str
    at: float


class JournalStore:
    """Open (creating if needed) the journal at ``path``; ``encryption_key`` is ENCRYPTION_KEY.

    A key that does not match an existing journal raises :class:`JournalKeyError` before
    anything is written, so the file stays readable with the right key. A journal written under
    one of ``previous_keys`` (ENCRYPTION_KEY_PREVIOUS) is re-encrypted under ``encryption_key``
    on open; records a process still running with the old key writes later are read with it.
    ``lease_s`` is how long a call stays owned by its process without a renewal.
    """

    def __init__(
        self,
        path: str | Path,
        encryption_key: str | None,
        *,
        previous_keys: Sequence[str] = (),
        lease_s: float = CALL_LEASE_S,
    ) -> None:
        self.path = Path(path)
        check_key(encryption_key)
        assert encryption_key is not None
        for old in previous_keys:
            check_key(old)
        self.lease_s = lease_s
        self._key, self._previous_keys = encryption_key, tuple(previous_keys)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA busy_timeout=30000")
            self._cipher, self._previous = self._open_cipher(encryption_key, previous_keys)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            if not self._verifies(self._cipher, self._key_meta()[1]):
                self.rekey(encryption_key)  # written under ENCRYPTION_KEY_PREVIOUS
        except BaseException:
            self._db.close()
            raise
        self.owner = current_owner()

    @classmethod
    def in_dir(
        cls,
        data_dir: str | Path,
        encryption_key: str | None,
        *,
        previous_keys: Sequence[str] = (),
        lease_s: float = CALL_LEASE_S,
    ) -> JournalStore:
        return cls(
            Path(data_dir) / JOURNAL_FILENAME,
            encryption_key,
            previous_keys=previous_keys,
            lease_s=lease_s,
        )

    def reopen(self) -> JournalStore:
        """A new store on the same file with the same keys (after a fault closed this one)."""
        return JournalStore(
            self.path, self._key, previous_keys=self._previous_keys, lease_s=self.lease_s
        )

    @property
    def spool_key(self) -> str:
        """The key a call's spool file is encrypted with (the journal's current key)."""
        return self._key

    @property
    def read_keys(self) -> tuple[str, ...]:
        return (self._key, *self._previous_keys)

    def _migrate(self) -> None:
        for table, column, decl in _MIGRATIONS:
            cols = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in cols:
                with self._tx():
                    cols = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                    if column not in cols:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def __repr__(self) -> str:
        return f"JournalStore({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- key -------------------------------------------------------------------------------
    def _open_cipher(
        self, key: str, previous_keys: Sequence[str]
    ) -> tuple[RecordCipher, list[RecordCipher]]:
        """The current key's cipher (creating the journal's key check if new) and the ciphers
        of ``previous_keys``, in the journal's salt."""
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        row = self._read_key_meta() if has_meta else None
        if row is None:
            with self._tx(immediate=True):
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
                )
                row = self._read_key_meta()
                if row is None:
                    salt = new_salt()
                    cipher = RecordCipher(key, salt)
                    check = cipher.encrypt(_KEY_CHECK, b"meta:key_check")
                    self._db.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [("salt", salt), ("key_check", check), ("format", b"1")],
                    )
                    log.info("journal created", path=str(self.path))
                    return cipher, [RecordCipher(k, salt) for k in previous_keys]
        salt, check = row
        cipher = RecordCipher(key, salt)
        previous = [RecordCipher(k, salt) for k in previous_keys]
        if self._verifies(cipher, check) or any(self._verifies(p, check) for p in previous):
            return cipher, previous
        raise JournalKeyError(
            f"ENCRYPTION_KEY does not match the journal at {self.path}: it was written with "
            "another key. Nothing was changed; set ENCRYPTION_KEY back to the key the journal "
            "was created with, or keep the new key and set ENCRYPTION_KEY_PREVIOUS to the old "
            "one to re-encrypt it (or move the file away to start a new journal, which leaves "
            "its undelivered items behind)."
        )

    def _read_key_meta(self) -> tuple[bytes, bytes] | None:
        rows = dict(
            self._db.execute("SELECT key, value FROM meta WHERE key IN ('salt','key_check')")
        )
        if "salt" in rows and "key_check" in rows:
            return bytes(rows["salt"]), bytes(rows["key_check"])
        return None

    def _key_meta(self) -> tuple[bytes, bytes]:
        row = self._read_key_meta()
        assert row is not None
        return row

    @staticmethod
    def _verifies(cipher: RecordCipher, check: bytes) -> bool:
        try:
            return cipher.decrypt(check, b"meta:key_check") == _KEY_CHECK
        except InvalidTag:
            return False

    def rekey(self, new_key: str) -> dict[str, int]:
        """Re-encrypt everything under ``new_key``, in one transaction: a crash at any point
        leaves the journal wholly under the old key or wholly under the new one.

        Items no key can read are quarantined on the way. Returns counts per table.
        """
        check_key(new_key)
        salt, _check = self._key_meta()
        new = RecordCipher(new_key, salt)
        counts = {"calls": 0, "records": 0, "outbox": 0}
        with self._tx():
            for cid, info in self._db.execute(
                "SELECT call_id, info FROM calls WHERE info IS NOT NULL"
            ).fetchall():
                aad = f"call:{cid}"
                plain = self._decrypt(info, aad)
                if plain is None:
                    self._set_aside("call", aad, cid, "no key reads it", info)
                    self._db.execute("UPDATE calls SET info=NULL WHERE call_id=?", (cid,))
                    continue
                self._db.execute(
                    "UPDATE calls SET info=? WHERE call_id=?",
                    (new.encrypt(plain, aad.encode()), cid),
                )
                counts["calls"] += 1
            for seq, cid, kind, payload in self._db.execute(
                "SELECT seq, call_id, kind, payload FROM records"
            ).fetchall():
                aad = f"record:{cid}:{seq}:{kind}"
                plain = self._decrypt(payload, aad)
                if plain is None:
                    self._set_aside("record", aad, cid, "no key reads it", payload)
                    self._db.execute("DELETE FROM records WHERE seq=?", (seq,))
                    continue
                self._db.execute(
                    "UPDATE records SET payload=? WHERE seq=?",
                    (new.encrypt(plain, aad.encode()), seq),
                )
                counts["records"] += 1
            for id_, uid, op, cid, payload in self._db.execute(
                "SELECT id, uid, op, call_id, payload FROM outbox"
            ).fetchall():
                aad = f"outbox:{uid}:{op}"
                plain = self._decrypt(payload, aad)
                if plain is None:
                    self._set_aside("outbox", aad, cid, "no key reads it", None)
                    self._db.execute(
                        "UPDATE outbox SET state=?, last_error=? WHERE id=?",
                        (QUARANTINED_STATE, "no key reads it", id_),
                    )
                    continue
                self._db.execute(
                    "UPDATE outbox SET payload=? WHERE id=?",
                    (new.encrypt(plain, aad.encode()), id_),
                )
                counts["outbox"] += 1
            self._db.execute(
                "UPDATE meta SET value=? WHERE key='key_check'",
                (new.encrypt(_KEY_CHECK, b"meta:key_check"),),
            )
        old = self._cipher
        self._cipher = new
        self._previous = [old, *[p for p in self._previous if p is not old]]
        if new_key != self._key:
            self._previous_keys = (self._key, *self._previous_keys)
            self._key = new_key
        log.warning("journal re-encrypted under the current key", path=str(self.path), **counts)
        return counts

    # -- plumbing --------------------------------------------------------------------------
    @contextmanager
    def _tx(self, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; nested uses join the outer one (all or nothing).

        A failed COMMIT (disk full, read-only, I/O error) rolls back, so the connection is
        usable again and the caller can retry the same writes later.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            self._depth = 1
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """Group several writes into one durable transaction."""
        return self._tx()

    def _seal(self, data: dict[str, Any], aad: str) -> bytes:
        raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return self._cipher.encrypt(raw, aad.encode("utf-8"))

    def _decrypt(self, blob: bytes | None, aad: str) -> bytes | None:
        """The plaintext under the current key or a previous one; None when none reads it."""
        if blob is None:
            return None
        for cipher in (self._cipher, *self._previous):
            try:
                return cipher.decrypt(bytes(blob), aad.encode("utf-8"))
            except (InvalidTag, ValueError):
                continue
        return None

    def _open(self, blob: bytes, aad: str) -> dict[str, Any]:
        raw = self._decrypt(blob, aad)
        try:
            value = json.loads(raw) if raw is not None else None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise JournalCorruptError(
                f"journal at {self.path}: {aad} failed authentication (damaged file?)"
            )
        return value

    def _set_aside(
        self, what: str, ref: str, call_id: str | None, reason: str, raw: bytes | None
    ) -> None:
        """Keep a damaged item's bytes in ``quarantine`` (caller holds a transaction)."""
        self._db.execute(
            "INSERT INTO quarantine (what, ref, call_id, reason, raw, at) VALUES (?,?,?,?,?,?)",
            (what, ref, call_id, reason, raw, time.time()),
        )
        QUARANTINED.labels(what=what).inc()
        log.error(
            "journal item quarantined: it cannot be read, everything else goes on",
            what=what,
            ref=ref,
            call_id=call_id,
            reason=reason,
            path=str(self.path),
        )

    def mark_imported(self, name: str) -> bool:
        """Remember that ``name`` (a spool file) was imported; False if it already was."""
        with self._tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, X'31')", (f"imported:{name}",)
            )
            return cur.rowcount == 1

    def quarantined(self) -> list[QuarantinedItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, what, ref, call_id, reason, at FROM quarantine ORDER BY id"
            ).fetchall()
        return [QuarantinedItem(*row) for row in rows]

    # -- calls -----------------------------------------------------------------------------
    def begin_call(self, call_id: str, info: dict[str, Any] | None = None) -> None:
        """Record the call (once) and take its lease for this process."""
        now = time.time()
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO calls (call_id, started_at, owner, info, lease_until)"
                " VALUES (?,?,?,?,?)",
                (
                    call_id,
                    now,
                    self.owner,
                    self._seal(info or {}, f"call:{call_id}"),
                    now + self.lease_s,
                ),
            )

    def renew_lease(self, call_id: str) -> None:
        """The call is alive in this process: nobody else finishes it for ``lease_s``."""
        with self._tx():
            self._db.execute(
                "UPDATE calls SET owner=?, lease_until=? WHERE call_id=? AND ended_at IS NULL",
                (self.owner, time.time() + self.lease_s, call_id),
            )

    def call_started_at(self, call_id: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT started_at FROM calls WHERE call_id=?", (call_id,)
            ).fetchone()
        return float(row[0]) if row else None

    def _call_info_locked(self, call_id: str) -> dict[str, Any] | None:
        """The call's info (None: no such call); damaged info is quarantined and reads as {}."""
        row = self._db.execute("SELECT info FROM calls WHERE call_id=?", (call_id,)).fetchone()
        if row is None:
            return None
        if row[0] is None:
            return {}
        try:
            return self._open(row[0], f"call:{call_id}")
        except JournalCorruptError as e:
            with self._tx():
                self._set_aside("call", f"call:{call_id}", call_id, str(e), bytes(row[0]))
                self._db.execute("UPDATE calls SET info=NULL WHERE call_id=?", (call_id,))
            return {}

    def call_info(self, call_id: str) -> dict[str, Any]:
        with self._lock:
            return self._call_info_locked(call_id) or {}

    def update_call_info(self, call_id: str, **fields: Any) -> dict[str, Any]:
        """Merge non-None ``fields`` into the call's (encrypted) info; returns the result."""
        with self._tx():
            info = self._call_info_locked(call_id)
            if info is None:
                raise KeyError(f"no call {call_id!r} in the journal at {self.path}")
            info.update({k: v for k, v in fields.items() if v is not None})
            self._db.execute(
                "UPDATE calls SET info=? WHERE call_id=?",
                (self._seal(info, f"call:{call_id}"), call_id),
            )
            return info

    def append(
        self, call_id: str, kind: str, data: dict[str, Any], *, at: float | None = None
    ) -> int:
        """Durably append one record (committed and fsynced when this returns); ``at`` is when
        it happened, if earlier (a record held in memory while the disk was full)."""
        with self._tx():
            cur = self._db.execute(
                "INSERT INTO records (call_id, at, kind, payload) VALUES (?,?,?,X'')",
                (call_id, time.time() if at is None else at, kind),
            )
            seq = int(cur.lastrowid or 0)
            self._db.execute(
                "UPDATE records SET payload=? WHERE seq=?",
                (self._seal(data, f"record:{call_id}:{seq}:{kind}"), seq),
            )
            return seq

    def records(self, call_id: str) -> list[Record]:
        """The call's readable records; a damaged one is quarantined, the rest returned."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, kind, payload FROM records WHERE call_id=? ORDER BY seq",
                (call_id,),
            ).fetchall()
            out = []
            for seq, at, kind, payload in rows:
                aad = f"record:{call_id}:{seq}:{kind}"
                try:
                    out.append(Record(seq, call_id, at, kind, self._open(payload, aad)))
                except JournalCorruptError as e:
                    with self._tx():
                        self._set_aside("record", aad, call_id, str(e), bytes(payload))
                        self._db.execute("DELETE FROM records WHERE seq=?", (seq,))
            return out

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

    def abandoned_calls(self) -> list[str]:
        """Open calls nobody owns any more: their lease expired, or their process is gone."""
        now = time.time()
        with self._lock:
            rows = self._db.execute(
                "SELECT call_id, owner, lease_until FROM calls WHERE ended_at IS NULL"
            ).fetchall()
        return [
            cid
            for cid, owner, lease_until in rows
            if owner != self.owner and (lease_until < now or owner_gone_here(owner))
        ]

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
            "INSERT OR IGNORE INTO outbox (uid, call_id, op, payload, created_at, maybe_sent)"
            " VALUES (?,?,?,?,?,?)",
            (
                uid,
                call_id,
                item.op,
                self._seal(item.payload, f"outbox:{uid}:{item.op}"),
                time.time(),
                1 if item.maybe_sent else 0,
            ),
        )
        return int(cur.lastrowid) if cur.rowcount == 1 and cur.lastrowid else None

    def enqueue(self, call_id: str | None, item: NewOutboxItem) -> int | None:
        """Queue a CRM write durably. A repeated ``uid`` is ignored (returns None)."""
        with self._tx():
            return self._insert_outbox(call_id, item)

    def _items(self, rows: list[tuple[Any, ...]]) -> list[OutboxItem]:
        """Decrypt ``rows``; a damaged one is quarantined in place and left out."""
        out = []
        for row in rows:
            (id_, uid, call_id, op, payload, state, attempts, next_at, maybe, err, result) = row
            try:
                data = self._open(payload, f"outbox:{uid}:{op}")
            except JournalCorruptError as e:
                with self._tx():
                    self._set_aside("outbox", f"outbox:{uid}:{op}", call_id, str(e), None)
                    self._db.execute(
                        "UPDATE outbox SET state=?, last_error=?, lease_until=0 WHERE id=?",
                        (QUARANTINED_STATE, str(e)[:500], id_),
                    )
                continue
            out.append(
                OutboxItem(
                    id_, uid, call_id, op, data, state, attempts, next_at, bool(maybe), err, result
                )
            )
        return out

    _COLS = (
        "id, uid, call_id, op, payload, state, attempts, next_attempt_at, maybe_sent,"
        " last_error, result"
    )

    def pending(self) -> list[OutboxItem]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLS} FROM outbox WHERE state=? ORDER BY id", (PENDING,)
            ).fetchall()
            return self._items(rows)

    def outbox(self, call_id: str | None = None) -> list[OutboxItem]:
        """Every readable item (quarantined ones are listed by :meth:`quarantined`)."""
        with self._lock:
            if call_id is None:
                rows = self._db.execute(
                    f"SELECT {self._COLS} FROM outbox WHERE state!=? ORDER BY id",
                    (QUARANTINED_STATE,),
                ).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {self._COLS} FROM outbox WHERE call_id=? AND state!=? ORDER BY id",
                    (call_id, QUARANTINED_STATE),
                ).fetchall()
            return self._items(rows)

    def quarantine_item(self, item: OutboxItem, reason: str) -> None:
        """Set aside an item that decrypts but can never be sent as it is (malformed)."""
        with self._tx():
            self._set_aside("outbox", f"outbox:{item.uid}:{item.op}", item.call_id, reason, None)
            self._db.execute(
                "UPDATE outbox SET state=?, last_error=?, lease_until=0 WHERE id=?",
                (QUARANTINED_STATE, reason[:500], item.id),
            )

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
