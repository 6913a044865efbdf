"""Warm connections: the member that will serve is connected before the caller needs it.

A WebSocket voice or recogniser (Cartesia, ElevenLabs) opens its socket on first use, so the
first sentence of a call pays a TLS + WebSocket handshake on top of the first-audio time, and
so does the first sentence after a switch. LiveKit's ``FallbackAdapter.prewarm()`` warms
member 0, whatever the chain's state. :class:`Warmer` warms, through each plugin's own public
``prewarm()`` (a no-op where a plugin has nothing to warm):

* at call start (the session's ``prewarm()``), the member that will *serve*: the first in the
  chain's order whose breaker the shared store shows closed (another call may have learned
  that the primary is down), else LiveKit's pick;
* the *next* member as soon as its predecessor starts failing (a failure that counts against
  its health, or a refusal by its open breaker), so a switch meets a warm connection.

Re-establishing a member's own dropped connection before its next request is the guard's job
(:meth:`~plugins.resilience.guard.GuardedPlugin.rewarm`). HTTP plugins (OpenAI-compatible
LLMs, Gemini) keep one client, and so one connection pool, per chain: connections are reused
within the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from plugins.fallback.cursor import ChainCursor
from plugins.resilience.guard import Guard
from plugins.resilience.types import Admission, BreakerState, Failure, GuardObserver

log = structlog.get_logger(__name__)

#: A member is warmed again at most this often on its predecessor's failures.
REWARM_EVERY_S = 5.0


def warm_member(member: Any) -> None:
    """``member.prewarm()``, never raising: a warm-up is an optimisation, not a request."""
    try:
        member.prewarm()
    except Exception as e:
        log.warning("prewarm failed", member=str(getattr(member, "label", member)), error=str(e))


class Warmer:
    """Warms one chain's serving member at call start and the next one when one falters."""

    def __init__(
        self,
        cursor: ChainCursor[Any],
        *,
        warm: Callable[[Any], None] = warm_member,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cursor = cursor
        self._warm = warm
        self._clock = clock
        self.enabled = True  # False: connections open on first use (LiveKit's default)
        self._warmed_at: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.warmed: list[int] = []  # member indices, in the order warmed (tests, bench)
        self._watches: list[tuple[Guard, GuardObserver]] = []
        for index, guard in enumerate(cursor.guards):
            if guard is not None:
                watch = _Faltering(self, index)
                guard.observers.append(watch)
                self._watches.append((guard, watch))

    def prewarm(self) -> None:
        """Warm the member that will serve (the store's view where a loop runs)."""
        if not self.enabled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._warm_index(self.cursor.serving())
            return
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._prewarm_serving())

    async def _prewarm_serving(self) -> None:
        self._warm_index(await self.serving())

    async def serving(self) -> int:
        """The first member in order whose breaker is closed in the shared store (read-only:
        no probe slot taken); the cursor's pick when the store cannot say."""
        fallback = self.cursor.serving()
        for index in self.cursor.order():
            if not self.cursor.status[index].available:
                continue
            guard = self.cursor.guards[index]
            if guard is None:
                return index
            try:
                health = await guard.store.health(guard.key)
            except Exception:
                return fallback  # the store fails open; so does the warm-up
            if health.state is BreakerState.CLOSED:
                return index
        return fallback

    def faltering(self, index: int) -> None:
        """Member ``index`` failed or was refused: warm the member after it."""
        if not self.enabled:
            return
        order = self.cursor.order()
        if index not in order or order.index(index) + 1 >= len(order):
            return
        self._warm_index(order[order.index(index) + 1], again_after_s=REWARM_EVERY_S)

    def _warm_index(self, index: int, *, again_after_s: float = 0.0) -> None:
        now = self._clock()
        last = self._warmed_at.get(index)
        if last is not None and now - last < again_after_s:
            return
        self._warmed_at[index] = now
        self.warmed.append(index)
        log.debug("warming provider", slot=self.cursor.slot, provider=self.cursor.keys[index])
        self._warm(self.cursor.members[index])

    def close(self) -> None:
        for guard, watch in self._watches:
            if watch in guard.observers:
                guard.observers.remove(watch)
        self._watches.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _Faltering(GuardObserver):
    def __init__(self, warmer: Warmer, index: int) -> None:
        self._warmer = warmer
        self._index = index

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        if failure.kind.counts_against_health:
            self._warmer.faltering(self._index)

    def on_skip(self, key: str, admission: Admission) -> None:
        self._warmer.faltering(self._index)
