"""A health store that fails open: a broken shared store never decides a call.

The shared store (SQLite on a machine, Redis in a pool) is how one call's lesson reaches the
next; it is also one more thing that can break. When it is unreachable (Redis down or absent),
hung (Redis stopped, a file locked), or unusable (a corrupt SQLite file, a read-only or full
disk), refusing every provider would move every call to the local floor although the cloud
providers are fine. Instead each process carries on from a breaker of its own
(:class:`~plugins.resilience.store_memory.MemoryHealthStore`: the same documents and the same
rules, kept in this process), so a healthy provider keeps answering and a failing one is still
skipped after it fails here.

* Every operation on the shared store has its own deadline (``StoreConfig.op_timeout_s``): a
  hung store costs one deadline, once, not a wait on every turn.
* The first fault is logged once, loudly, naming the store and what to do; while degraded no
  operation waits on the shared store. Every ``retry_s`` a background ping (a real read and
  write) tries it; when it succeeds the process is back on the shared store (logged once).
* A :class:`StoreFaultObserver` (the Prometheus metrics) hears each change of state.

The in-memory store is one per process and per shared store (:func:`local_store_for`), so the
calls of one process share what they learned while the shared store was away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import structlog

from plugins.resilience.headroom import Headroom
from plugins.resilience.store import DocumentStore
from plugins.resilience.store_memory import MemoryHealthStore
from plugins.resilience.types import Admission, BreakerState, Failure, ProviderHealth

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: How often a degraded process tries the shared store again (in the background).
RETRY_S = 2.0


class StoreFaultObserver(Protocol):
    """Hears when a process loses its shared health store and when it has it back."""

    def on_store_up(self, where: str) -> None:
        """The process uses the shared store (when opened, and again after a fault)."""

    def on_store_down(self, where: str, reason: str) -> None:
        """The process fell open; ``reason`` is ``timeout`` or ``error``."""


_LOCAL: dict[tuple[str, str], MemoryHealthStore] = {}


def local_store_for(shared: DocumentStore) -> MemoryHealthStore:
    """This process's own store standing in for ``shared`` (one per store and key prefix)."""
    place = (shared.where, shared.config.redis_prefix)
    store = _LOCAL.get(place)
    if store is None:
        store = _LOCAL[place] = MemoryHealthStore(shared.config)
    return store


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "error"


class FailOpenStore:
    """:class:`~plugins.resilience.types.HealthStore` over a shared store that may fail.

    ``local`` defaults to the process's own store standing in for ``shared``.
    """

    def __init__(
        self,
        shared: DocumentStore,
        *,
        local: DocumentStore | None = None,
        observers: tuple[StoreFaultObserver, ...] = (),
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.where = shared.where
        self.local = local if local is not None else local_store_for(shared)
        self.timeout_s = shared.config.op_timeout_s
        self.observers = observers
        self.retry_s = retry_s
        self._clock = clock
        self._fault: str | None = None  # what went wrong, while degraded
        self._down_since = 0.0
        self._retry_at = 0.0
        self._retrying: asyncio.Task[None] | None = None
        for observer in observers:
            observer.on_store_up(self.where)

    @property
    def degraded(self) -> str | None:
        """Why this process decides from its own breakers now; None while on the shared store."""
        return self._fault

    # -- the one path every operation takes --------------------------------------------------

    async def _call(
        self,
        shared: Callable[[], Awaitable[T]],
        local: Callable[[], Awaitable[T]],
    ) -> T:
        """``shared()`` under the deadline; on a store fault (or while degraded) ``local()``.

        While degraded, an operation that finds a retry due starts one background
        :meth:`~plugins.resilience.store.DocumentStore.ping` of the shared store; its success
        ends the degraded state.
        """
        if self._fault is None:
            try:
                return await asyncio.wait_for(shared(), self.timeout_s)
            except ValueError:
                raise  # a caller's bad argument, not a store fault
            except Exception as exc:
                self._fell_open(exc)
        elif self._clock() >= self._retry_at and self._retrying is None:
            self._retry_at = self._clock() + self.retry_s
            self._retrying = asyncio.create_task(self._retry())
        return await local()

    async def _retry(self) -> None:
        try:
            await asyncio.wait_for(self.shared.ping(), self.timeout_s)
        except Exception as exc:
            log.debug("health store still failing", store=self.where, error=_describe(exc))
        else:
            self._recovered()
        finally:
            self._retrying = None

    def _fell_open(self, exc: BaseException) -> None:
        if self._fault is not None:
            return  # another operation in flight already reported it
        self._fault = _describe(exc)
        self._down_since = self._clock()
        self._retry_at = self._down_since + self.retry_s
        log.error(
            "health store failed: this process now decides from its own in-memory breakers "
            "and keeps using healthy providers; other processes no longer learn from it",
            store=self.where,
            error=self._fault,
            fix="check that the store is running, reachable and writable "
            "(`python -m agent doctor` checks it)",
        )
        for observer in self.observers:
            observer.on_store_down(self.where, _reason(exc))

    def _recovered(self) -> None:
        down_s = self._clock() - self._down_since
        self._fault = None
        log.warning(
            "health store is back: this process shares provider health again",
            store=self.where,
            down_s=round(down_s, 1),
        )
        for observer in self.observers:
            observer.on_store_up(self.where)

    # -- HealthStore -------------------------------------------------------------------------

    async def admit(self, key: str, *, now: float | None = None) -> Admission:
        return await self._call(
            lambda: self.shared.admit(key, now=now), lambda: self.local.admit(key, now=now)
        )

    async def record_success(
        self, key: str, *, latency_s: float | None, now: float | None = None
    ) -> None:
        await self._call(
            lambda: self.shared.record_success(key, latency_s=latency_s, now=now),
            lambda: self.local.record_success(key, latency_s=latency_s, now=now),
        )

    async def record_failure(
        self, key: str, failure: Failure, *, now: float | None = None
    ) -> BreakerState:
        return await self._call(
            lambda: self.shared.record_failure(key, failure, now=now),
            lambda: self.local.record_failure(key, failure, now=now),
        )

    async def add_usage(
        self, key: str, unit: str, amount: float, *, now: float | None = None
    ) -> float:
        return await self._call(
            lambda: self.shared.add_usage(key, unit, amount, now=now),
            lambda: self.local.add_usage(key, unit, amount, now=now),
        )

    async def register(self, key: str, fingerprint: str) -> BreakerState:
        return await self._call(
            lambda: self.shared.register(key, fingerprint),
            lambda: self.local.register(key, fingerprint),
        )

    async def record_credit(
        self,
        key: str,
        *,
        remaining: float,
        limit: float | None,
        unit: str,
        reset_at: float | None,
        now: float | None = None,
    ) -> None:
        def write(store: DocumentStore) -> Callable[[], Awaitable[None]]:
            return lambda: store.record_credit(
                key, remaining=remaining, limit=limit, unit=unit, reset_at=reset_at, now=now
            )

        await self._call(write(self.shared), write(self.local))

    async def record_headroom(self, key: str, readings: list[Headroom]) -> None:
        await self._call(
            lambda: self.shared.record_headroom(key, readings),
            lambda: self.local.record_headroom(key, readings),
        )

    async def headroom(self, key: str) -> list[Headroom]:
        return await self._call(lambda: self.shared.headroom(key), lambda: self.local.headroom(key))

    async def health(self, key: str) -> ProviderHealth:
        return await self._call(lambda: self.shared.health(key), lambda: self.local.health(key))

    async def all_health(self) -> list[ProviderHealth]:
        return await self._call(self.shared.all_health, self.local.all_health)

    async def set_override(self, key: str, state: BreakerState | None) -> None:
        """An operator's decision goes to the shared store or fails: never silently local."""
        await asyncio.wait_for(self.shared.set_override(key, state), self.timeout_s)

    async def aclose(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
        await self.shared.aclose()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the store's deadline (hung or overloaded)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
