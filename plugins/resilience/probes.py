"""Cheap recovery: a synthetic probe when a breaker's open time ends.

LiveKit's ``FallbackAdapter`` recovers a provider by replaying the caller's real request to it
after every turn. With the guard in front, those replays fail at once while the breaker is
open, and the real recovery happens here: when the open time ends, one prober takes the
store's half-open lease (one per provider per cooldown window, machine- or pool-wide) and
sends a minimal synthetic request - one "ping" token, one short word, half a second of silence.
Success closes the breaker and the chain returns to the primary; failure re-opens it for longer.
A caller's request that happens to win the lease hands it to the prober and fails over, so a
real turn is never the probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from plugins.resilience.guard import Guard, ProbeHook
from plugins.resilience.types import Admission, BreakerState

log = structlog.get_logger(__name__)

ProbeRequest = Callable[[], Awaitable[float]]


class Prober(ProbeHook):
    """Background prober for one guarded provider in this process.

    ``clock`` must be the store's clock (epoch seconds): it turns ``open_until`` into a sleep.
    ``min_interval_s`` keeps a refused or failed probe from being retried in a tight loop.
    """

    def __init__(
        self,
        guard: Guard,
        request: ProbeRequest,
        *,
        clock: Callable[[], float] = time.time,
        min_interval_s: float = 1.0,
        auto: bool = True,
    ) -> None:
        self.guard = guard
        self.request = request
        self.clock = clock
        self.min_interval_s = min_interval_s
        self.auto = auto
        self.sent = 0  # synthetic requests this prober actually sent
        self._timer: asyncio.Task[None] | None = None
        self._timer_at: float | None = None
        self._running: asyncio.Task[None] | None = None
        self._closed = False
        guard.prober = self

    # -- ProbeHook ---------------------------------------------------------------------------
    def take_probe(self, admission: Admission) -> None:
        """A caller's request won the half-open lease: probe synthetically in its place."""
        if self._running is not None and not self._running.done():
            return
        self._running = asyncio.create_task(self._probe(admission))

    def schedule(self, at: float | None) -> None:
        """Probe at ``at`` (epoch, store clock), or when the store says the breaker reopens."""
        if self._closed or not self.auto:
            return
        if self._timer is not None and not self._timer.done():
            if at is None or (self._timer_at is not None and self._timer_at <= at):
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.create_task(self._wait_then_probe(at))

    # -- probing -------------------------------------------------------------------------------
    async def try_probe(self) -> bool:
        """Ask for the half-open lease now; probe if granted. True when the breaker is closed."""
        admission = await self.guard.store.admit(self.guard.key)
        if admission.allowed and admission.is_probe:
            await self._probe(admission)
            admission = await self.guard.store.admit(self.guard.key)
            return admission.allowed and admission.state is BreakerState.CLOSED
        return admission.allowed and admission.state is BreakerState.CLOSED

    async def _probe(self, admission: Admission) -> None:
        self.sent += 1
        self.guard.notify(lambda o: o.on_attempt(self.guard.key, is_probe=True))
        since = self.guard.started()
        try:
            latency = await self.request()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            failure = self.guard.classify(e, since)
            log.info("probe failed", provider=self.guard.key, kind=failure.kind.value)
            state = await self.guard.record_failure(failure)
            if state is BreakerState.OPEN:
                self.schedule(None)
            return
        await self.guard.store.record_success(self.guard.key, latency_s=latency)
        self.guard.notify(lambda o: o.on_success(self.guard.key, latency_s=latency, is_probe=True))
        log.info("probe succeeded: provider back", provider=self.guard.key, latency_s=latency)

    async def _wait_then_probe(self, at: float | None) -> None:
        try:
            while not self._closed:
                if at is None:
                    health = await self.guard.store.health(self.guard.key)
                    if health.state is BreakerState.KEY_REJECTED:
                        return
                    at = health.open_until
                    if at is None and health.state is BreakerState.CLOSED:
                        return
                delay = max(0.0, (at or self.clock()) - self.clock())
                await asyncio.sleep(max(delay, 0.0) + 0.01)
                admission = await self.guard.store.admit(self.guard.key)
                if admission.allowed and admission.is_probe:
                    await self._probe(admission)
                    return
                if admission.allowed or admission.state in (
                    BreakerState.KEY_REJECTED,
                    BreakerState.DISABLED,
                    BreakerState.FORCED_OPEN,
                ):
                    return  # closed already (another process probed), or an operator's call
                # someone else holds the lease, or the open time moved: look again later
                at = max(admission.until or 0.0, self.clock() + self.min_interval_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("prober failed", provider=self.guard.key)
        finally:
            self._timer_at = None

    async def wait(self) -> None:
        """Wait for a probe taken over from a caller to finish (tests, shutdown)."""
        if self._running is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._running

    async def aclose(self) -> None:
        self._closed = True
        for task in (self._timer, self._running):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
