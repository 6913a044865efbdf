"""A token bucket per (app, location) that keeps us under GHL's burst limit.

GHL allows 100 requests per 10 s per location. We aim for 80 per 10 s and keep part of the
bucket for interactive calls (a caller is waiting), so a backlog of outbox writes can never
starve a lookup. The server's own view wins: ``X-RateLimit-Remaining`` lowers our count, and a
429 (with ``Retry-After``, or the interval GHL reports) stops every request until it passes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping

import structlog

from agent.crm.errors import GhlRateLimitedError
from plugins.resilience.retry_after import bounded_wait, parse_retry_after

log = structlog.get_logger(__name__)


class TokenBucket:
    def __init__(
        self,
        *,
        capacity: float = 80.0,
        interval_s: float = 10.0,
        interactive_reserve: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= interactive_reserve < capacity:
            raise ValueError(
                f"interactive_reserve must be in [0, capacity={capacity}); got {interactive_reserve}"
            )
        self.capacity = capacity
        self.interval_s = interval_s
        self.interactive_reserve = interactive_reserve
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()
        self._blocked_until = 0.0

    @property
    def rate_per_s(self) -> float:
        return self.capacity / self.interval_s

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now

    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def wait_time(self, *, interactive: bool) -> float:
        """Seconds until a token is available for this kind of request (0: now)."""
        self._refill()
        now = self._clock()
        blocked = max(0.0, self._blocked_until - now)
        floor = 0.0 if interactive else self.interactive_reserve
        missing = floor + 1.0 - self._tokens
        refill_wait = max(0.0, missing / self.rate_per_s)
        return max(blocked, refill_wait)

    def try_take(self, *, interactive: bool) -> bool:
        if self.wait_time(interactive=interactive) > 0:
            return False
        self._tokens -= 1.0
        return True

    async def acquire(self, *, interactive: bool, max_wait_s: float | None = None) -> None:
        """Take a token, waiting for one; raise :class:`GhlRateLimitedError` if the wait would
        exceed ``max_wait_s`` (an interactive caller cannot wait seconds)."""
        while True:
            wait = self.wait_time(interactive=interactive)
            if wait <= 0:
                self._tokens -= 1.0
                return
            if max_wait_s is not None and wait > max_wait_s:
                raise GhlRateLimitedError(
                    f"GHL rate limit: no request slot for {wait:.2f}s "
                    f"(more than the {max_wait_s:.2f}s this call can wait)",
                    retry_after_s=wait,
                    status=None,
                )
            if max_wait_s is not None:
                max_wait_s -= wait
            await asyncio.sleep(wait)

    def block_for(self, seconds: float) -> None:
        """Stop all requests for ``seconds`` (after a 429)."""
        until = self._clock() + max(0.0, seconds)
        if until > self._blocked_until:
            self._blocked_until = until
            self._refill()
            self._tokens = min(self._tokens, 0.0)
            log.warning("ghl rate limited: pausing requests", seconds=round(seconds, 3))

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Align with the server's count: never believe we have more than GHL says is left."""
        remaining = _as_float(headers.get("X-RateLimit-Remaining"))
        if remaining is None:
            return
        limit = _as_float(headers.get("X-RateLimit-Max"))
        # Scale the server's remaining count to our (smaller) capacity.
        scaled = remaining * (self.capacity / limit) if limit and limit > 0 else remaining
        self._refill()
        if scaled < self._tokens:
            self._tokens = scaled
        if remaining <= 0:
            interval_ms = _as_float(headers.get("X-RateLimit-Interval-Milliseconds"))
            wait = bounded_wait((interval_ms or self.interval_s * 1000) / 1000.0)
            self.block_for(self.interval_s if wait is None else wait)


def retry_after_from(headers: Mapping[str, str], *, default_s: float) -> float:
    """Retry-After (seconds or HTTP date) if present, else GHL's interval, else ``default_s``.

    Both go through the project's one Retry-After reader, so an absurd value is clamped.
    """
    value = headers.get("Retry-After")
    if value:
        seconds = parse_retry_after(value)
        if seconds is not None:
            return seconds
    interval_ms = _as_float(headers.get("X-RateLimit-Interval-Milliseconds"))
    if interval_ms is not None and interval_ms > 0:
        return bounded_wait(interval_ms / 1000.0) or default_s
    return default_s


def _as_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
