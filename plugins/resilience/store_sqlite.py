"""The machine-wide health store: one SQLite file shared by every job process on the machine.

LiveKit runs each call in its own process, so a lesson one call learns (a provider is down, a
key is rejected) must reach the next call through something all processes share. A WAL-mode
SQLite file does that with no server. Each change is one ``BEGIN IMMEDIATE`` transaction (the
write lock is taken before the read), which makes every read-modify-write atomic across
processes; ``busy_timeout`` makes concurrent writers wait instead of failing.

sqlite3 blocks, so every statement runs on one dedicated thread per store: the event loop
never waits on the file, and the connection is only ever used from the thread that made it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from plugins.resilience.breaker import Jitter
from plugins.resilience.store import (
    Clock,
    DocumentStore,
    HealthStoreError,
    Parts,
    ProviderDoc,
    StoreConfig,
    apply_change,
)

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS provider ("
    " key TEXT PRIMARY KEY, breaker TEXT NOT NULL, stats TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS usage ("
    " key TEXT NOT NULL, field TEXT NOT NULL, amount REAL NOT NULL, PRIMARY KEY (key, field))",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value REAL NOT NULL)",
)


class SqliteHealthStore(DocumentStore):
    """:class:`~plugins.resilience.types.HealthStore` on a SQLite file (created if missing)."""

    def __init__(
        self,
        path: Path,
        *,
        config: StoreConfig | None = None,
        clock: Clock = time.time,
        jitter: Jitter | None = None,
        busy_timeout_ms: int = 5000,
    ) -> None:
        super().__init__(config, clock=clock, jitter=jitter)
        self.path = Path(path)
        self.where = f"sqlite:///{self.path}"
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    # -- thread side -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path,
                    timeout=self._busy_timeout_ms / 1000.0,
                    isolation_level=None,  # we issue BEGIN / COMMIT ourselves
                    check_same_thread=False,
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
                conn.execute("PRAGMA synchronous = NORMAL")
                self._initialise(conn)
            except (OSError, sqlite3.Error) as exc:
                raise HealthStoreError(
                    f"cannot open the health store at {self.path} ({exc}); set the data "
                    "directory to a writable local path or configure a redis:// store URL"
                ) from exc
            self._conn = conn
        return self._conn

    def _initialise(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL and create the tables, once, whoever gets there first.

        Changing the journal mode of a new file is not covered by the busy handler: two
        processes opening a fresh file together can get "database is locked" at once, so this
        step retries (with a short backoff) up to the busy timeout.
        """
        deadline = time.monotonic() + self._busy_timeout_ms / 1000.0
        pause = 0.005
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _transaction(self, key: str, change: Callable[[ProviderDoc], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result, write = apply_change(self._select(key), change, key=key)
            if write is not None:
                conn.execute(
                    "INSERT INTO provider (key, breaker, stats) VALUES (?, ?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET breaker = excluded.breaker, stats = excluded.stats",
                    (key, *write),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    def _select(self, key: str) -> Parts:
        rows = self._connection().execute(
            "SELECT breaker, stats FROM provider WHERE key = ?", (key,)
        )
        found = rows.fetchone()
        return ("", "") if found is None else (str(found[0]), str(found[1]))

    def _select_breaker(self, key: str) -> str:
        rows = self._connection().execute("SELECT breaker FROM provider WHERE key = ?", (key,))
        found = rows.fetchone()
        return "" if found is None else str(found[0])

    def _increment(self, key: str, field_name: str, amount: float) -> float:
        row = (
            self._connection()
            .execute(
                "INSERT INTO usage (key, field, amount) VALUES (?, ?, ?) "
                "ON CONFLICT (key, field) DO UPDATE SET amount = amount + excluded.amount "
                "RETURNING amount",
                (key, field_name, amount),
            )
            .fetchone()
        )
        return float(row[0])

    def _select_usage(self, key: str) -> dict[str, float]:
        rows = self._connection().execute("SELECT field, amount FROM usage WHERE key = ?", (key,))
        return {str(f): float(a) for f, a in rows.fetchall()}

    def _select_keys(self) -> list[str]:
        rows = self._connection().execute("SELECT key FROM provider UNION SELECT key FROM usage")
        return [str(r[0]) for r in rows.fetchall()]

    def _write_checked(self, now: float) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('checked_at', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (now,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- event-loop side -------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise RuntimeError("the health store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise HealthStoreError(
                f"health store {self.path} failed ({exc}); check the disk and that no other "
                "program holds the file locked"
            ) from exc

    async def _read_breaker(self, key: str) -> str:
        return await self._run(self._select_breaker, key)

    async def _read(self, key: str) -> Parts:
        return await self._run(self._select, key)

    async def _update(self, key: str, change: Callable[[ProviderDoc], T]) -> T:
        return await self._run(self._transaction, key, change)

    async def _add_usage(self, key: str, field_name: str, amount: float) -> float:
        return await self._run(self._increment, key, field_name, amount)

    async def _usage(self, key: str) -> dict[str, float]:
        return await self._run(self._select_usage, key)

    async def _keys(self) -> list[str]:
        return await self._run(self._select_keys)

    async def _ping(self, now: float) -> None:
        await self._run(self._write_checked, now)

    async def aclose(self) -> None:
        if self._closed:
            return
        await self._run(self._close)
        self._closed = True
        self._executor.shutdown(wait=False)
