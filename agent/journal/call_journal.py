"""One call's writes to the journal, which never fail the call.

A call's process writes everything said, every lead and every CRM write through a
:class:`CallJournal`. When the journal cannot be opened (wrong key, damaged file) or written
(disk full, read-only directory, I/O error), the writes are *held* in memory, in order, and the
call goes on: the fault is logged loudly once, counted (``journal_faults_total``,
``journal_held_items``), and the held writes are written, in one transaction, as soon as the
journal works again (every few seconds and on every new write). If it still does not work when
the call ends, the held writes are saved, encrypted, to a spool file
(:mod:`agent.journal.spool`), which the worker's deliverer imports into the journal once it can.
Nothing here raises into the call or into LiveKit's shutdown.

Each write is data (:class:`Held`), so holding, replaying and spooling are one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.journal import spool
from agent.journal.crypto import JournalCorruptError, JournalKeyError
from agent.journal.finish import finish_call
from agent.journal.metrics import FAULTS, HELD
from agent.journal.store import JournalStore, NewOutboxItem

log = structlog.get_logger(__name__)

RETRY_S = 2.0  # how often held writes are retried while the call runs

# What a journal that does not work raises: its file, its disk or its key.
JOURNAL_FAULTS: tuple[type[BaseException], ...] = (
    sqlite3.Error,
    OSError,
    JournalKeyError,
    JournalCorruptError,
)


class CallWrites(Protocol):
    """What a call writes and reads: a :class:`CallJournal` in a call, a store in tests."""

    def begin_call(self, call_id: str, info: dict[str, Any] | None = None) -> None: ...
    def update_call_info(self, call_id: str, **fields: Any) -> dict[str, Any]: ...
    def call_info(self, call_id: str) -> dict[str, Any]: ...
    def append(self, call_id: str, kind: str, data: dict[str, Any]) -> object: ...
    def enqueue(self, call_id: str | None, item: NewOutboxItem) -> object: ...


@dataclass(frozen=True)
class Held:
    """One write of a call, as data: ``begin``, ``info``, ``append``, ``enqueue`` or ``finish``."""

    op: str
    args: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


def apply(store: JournalStore, call_id: str, write: Held) -> None:
    """Perform one held write (inside the caller's transaction)."""
    a = write.args
    if write.op == "begin":
        store.begin_call(call_id, a.get("info"))
    elif write.op == "info":
        store.begin_call(call_id)
        store.update_call_info(call_id, **a["fields"])
    elif write.op == "append":
        store.begin_call(call_id)
        store.append(call_id, a["kind"], a["data"], at=write.at)
    elif write.op == "enqueue":
        store.begin_call(call_id)
        store.enqueue(call_id, NewOutboxItem(**a["item"]))
    elif write.op == "finish":
        store.begin_call(call_id)
        finish_call(store, call_id, reason=a["reason"], usage_summary=a.get("usage_summary"))
    else:
        raise ValueError(f"unknown journal write {write.op!r}")


class CallJournal:
    """The journal as one call sees it; the same write methods as :class:`JournalStore`.

    ``open_store`` opens the journal (it is called again after a failure); ``key`` encrypts a
    spool file; ``spool_dirs`` are tried in order when the call ends with writes still held.
    """

    def __init__(
        self,
        call_id: str,
        open_store: Callable[[], JournalStore],
        *,
        key: str,
        spool_dirs: Sequence[Path],
        retry_s: float = RETRY_S,
    ) -> None:
        self.call_id = call_id
        self._open_store = open_store
        self._key = key
        self._spool_dirs = list(spool_dirs)
        self.retry_s = retry_s
        self._store: JournalStore | None = None
        self._held: list[Held] = []
        self._info: dict[str, Any] = {}  # this call's info as written, for reads while held
        self._fault: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_renew = 0.0
        self._next_try = 0.0  # while failing, writes wait for the retry timer
        self.spooled_to: Path | None = None
        self.closed = False

    @classmethod
    def over(cls, store: JournalStore, call_id: str) -> CallJournal:
        """A call journal on an open store (reopened like it after a damaged-file fault)."""
        journal = cls(
            call_id,
            store.reopen,
            key=store.spool_key,
            spool_dirs=spool.spool_dirs(store.path.parent),
        )
        journal._store = store
        return journal

    # -- the writes (same names as JournalStore's, so tools and leads take either) ---------
    def begin_call(self, call_id: str, info: dict[str, Any] | None = None) -> None:
        self._check(call_id)
        if info:
            self._info.update({k: v for k, v in info.items() if v is not None})
        self._write(Held("begin", {"info": info or {}}))

    def update_call_info(self, call_id: str, **fields: Any) -> dict[str, Any]:
        self._check(call_id)
        clean = {k: v for k, v in fields.items() if v is not None}
        self._info.update(clean)
        self._write(Held("info", {"fields": clean}))
        return dict(self._info)

    def append(self, call_id: str, kind: str, data: dict[str, Any]) -> None:
        self._check(call_id)
        self._write(Held("append", {"kind": kind, "data": data}))

    def enqueue(self, call_id: str | None, item: NewOutboxItem) -> None:
        self._check(call_id)
        if item.uid is None:  # a uid makes the write idempotent when it is replayed
            item = replace(item, uid=uuid.uuid4().hex)
        self._write(Held("enqueue", {"item": _item_args(item)}))

    def call_info(self, call_id: str) -> dict[str, Any]:
        """What the journal knows (e.g. the contact the deliverer created), then this call's own
        writes on top: reads work while writes are held."""
        self._check(call_id)
        stored: dict[str, Any] = {}
        store = self._ensure_store()
        if store is not None:
            try:
                stored = store.call_info(call_id)
            except JOURNAL_FAULTS as e:
                self._failed("read", e)
        return {**stored, **self._info}

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def healthy(self) -> bool:
        return self._fault is None

    def start(self) -> None:
        """Retry held writes and renew the call's lease while the call runs."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._tick(), name=f"journal-{self.call_id}"
            )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            try:
                self.flush()
                self._renew()
            except Exception:  # never let the call's background work die silently
                log.exception("journal upkeep failed", call_id=self.call_id)

    def finish(self, *, reason: str, usage_summary: str | None = None) -> bool:
        """Close the call (once) and queue its transcript; True when it reached the journal.

        When the journal still does not work, the held writes go to a spool file instead.
        """
        if self.closed:
            return True
        self.closed = True
        self._stop()
        self._write(Held("finish", {"reason": reason, "usage_summary": usage_summary}), force=True)
        if self._held:
            self._spool()
            return False
        return True

    def close(self) -> None:
        self._stop()
        if self._held and not self.closed:
            self._spool()
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    # -- plumbing --------------------------------------------------------------------------
    def _check(self, call_id: str | None) -> None:
        if call_id is not None and call_id != self.call_id:
            raise ValueError(f"this journal writes call {self.call_id!r}, not {call_id!r}")

    def _write(self, write: Held, *, force: bool = False) -> None:
        if self.closed and write.op != "finish":
            log.warning("journal write after the call ended", call_id=self.call_id, op=write.op)
        self._held.append(write)
        if force or self._fault is None or time.monotonic() >= self._next_try:
            self.flush()
        else:
            self._gauge()

    def flush(self) -> bool:
        """Write every held write, in order, in one transaction; True when none is left."""
        if not self._held:
            return True
        self._next_try = time.monotonic() + self.retry_s
        store = self._ensure_store()
        if store is None:
            self._gauge()
            return False
        batch = list(self._held)
        # After a fault the journal may be a fresh file (the damaged one moved aside): restate
        # who the caller is, so the held transcript still finds its contact.
        restate = [self._restatement()] if self._fault is not None and self._info else []
        try:
            with store.transaction():
                for write in restate + batch:
                    apply(store, self.call_id, write)
        except JOURNAL_FAULTS as e:
            self._failed("write", e)
            self._gauge()
            return False
        del self._held[: len(batch)]
        self._gauge()
        self._recovered(len(batch))
        self._renew()
        return True

    def _renew(self) -> None:
        store = self._store
        if store is None or self._held or time.monotonic() - self._last_renew < store.lease_s / 3:
            return
        try:
            store.renew_lease(self.call_id)
            self._last_renew = time.monotonic()
        except JOURNAL_FAULTS as e:
            self._failed("renew", e)

    def _ensure_store(self) -> JournalStore | None:
        if self._store is None:
            try:
                self._store = self._open_store()
            except JOURNAL_FAULTS as e:
                self._failed("open", e)
                return None
            self._last_renew = time.monotonic()
        return self._store

    def _failed(self, operation: str, error: BaseException) -> None:
        FAULTS.labels(operation=operation).inc()
        reason = f"{type(error).__name__}: {error}"
        if self._fault is None:
            log.error(
                "JOURNAL FAULT: the call goes on, its writes are held in memory until the "
                "journal works again",
                call_id=self.call_id,
                operation=operation,
                error=reason,
                held=len(self._held),
            )
        self._fault = reason
        if isinstance(error, sqlite3.DatabaseError) and not isinstance(
            error, sqlite3.OperationalError
        ):
            # a damaged file: reopen next time (an operator may have moved it away)
            store, self._store = self._store, None
            if store is not None:
                with contextlib.suppress(Exception):
                    store.close()

    def _recovered(self, written: int) -> None:
        if self._fault is not None:
            log.warning(
                "journal works again: held writes written",
                call_id=self.call_id,
                written=written,
                after=self._fault,
            )
            self._fault = None

    def _gauge(self) -> None:
        HELD.set(len(self._held))

    def _restatement(self) -> Held:
        return Held("info", {"fields": dict(self._info)}, at=self._held[0].at)

    def _spool(self) -> None:
        restate = [self._restatement()] if self._info else []
        writes, self._held = restate + self._held, []
        self._gauge()
        path = spool.save(self.call_id, writes, key=self._key, dirs=self._spool_dirs)
        if path is None:
            log.critical(
                "JOURNAL LOST: the journal and every spool directory refused this call's writes",
                call_id=self.call_id,
                writes=len(writes),
                dirs=[str(d) for d in self._spool_dirs],
            )
            return
        self.spooled_to = path
        log.error(
            "journal still failing at the end of the call: its writes are in a spool file; "
            "the worker delivers them once the journal works",
            call_id=self.call_id,
            writes=len(writes),
            spool=str(path),
            error=self._fault,
        )


def _item_args(item: NewOutboxItem) -> dict[str, Any]:
    return {
        "op": item.op,
        "payload": item.payload,
        "uid": item.uid,
        "maybe_sent": item.maybe_sent,
    }
