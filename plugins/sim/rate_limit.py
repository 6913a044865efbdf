"""Per-key rate limits as OpenAI enforces and reports them, for the simulators.

OpenAI limits each organisation (each key's account) to so many requests and tokens per
minute, and reports on every response ``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests`` and ``x-ratelimit-reset-requests`` (and the same for
tokens), the reset being the time until the limit is back to full ("1s", "6m0s"). The limit
behaves as a bucket that refills steadily: a key that spent its 60 requests gets one back
every second. Over it, the request is refused with 429, the same headers and a
``retry-after`` for the next free request.

``window_s`` is the limit's period: 60 s is OpenAI's "per minute"; a benchmark may compress
time (6 s) and say so.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def openai_duration(seconds: float) -> str:
    """``0.12`` -> ``120ms``, ``2.5`` -> ``2.5s``, ``360`` -> ``6m0s``: OpenAI's reset format."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


@dataclass
class _Bucket:
    level: float
    at: float


@dataclass(frozen=True)
class LimitDecision:
    """What the limiter said about one request: allowed or not, and the headers to send."""

    allowed: bool
    headers: dict[str, str]
    dimension: str = ""  # which limit refused it
    retry_after_s: float = 0.0


@dataclass
class KeyRateLimiter:
    """Requests and tokens per ``window_s`` for each key, refilling steadily (thread-safe)."""

    requests: int = 60
    tokens: int = 150_000
    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.requests < 1 or self.tokens < 1 or self.window_s <= 0:
            raise ValueError("requests and tokens must be >= 1 and window_s > 0")

    def take(self, key: str, tokens: int) -> LimitDecision:
        """Spend one request and ``tokens`` of ``key``'s limits, or refuse (spending none)."""
        now = self.clock()
        with self._lock:
            limits = {"requests": (self.requests, 1.0), "tokens": (self.tokens, float(tokens))}
            levels = {d: self._level(key, d, limit, now) for d, (limit, _) in limits.items()}
            refused = next((d for d, (_, cost) in limits.items() if levels[d] < cost), None)
            if refused is None:
                for d, (_, cost) in limits.items():
                    levels[d] -= cost
                    self._buckets[(key, d)] = _Bucket(levels[d], now)
            headers: dict[str, str] = {}
            for d, (limit, _) in limits.items():
                rate = limit / self.window_s
                headers[f"x-ratelimit-limit-{d}"] = str(limit)
                headers[f"x-ratelimit-remaining-{d}"] = str(max(0, math.floor(levels[d])))
                headers[f"x-ratelimit-reset-{d}"] = openai_duration((limit - levels[d]) / rate)
            wait = 0.0
            if refused is not None:
                limit, cost = limits[refused]
                wait = (min(cost, limit) - levels[refused]) / (limit / self.window_s)
            return LimitDecision(refused is None, headers, refused or "", max(wait, 0.0))

    def _level(self, key: str, dimension: str, limit: int, now: float) -> float:
        bucket = self._buckets.get((key, dimension))
        if bucket is None:
            return float(limit)
        refill = (now - bucket.at) * limit / self.window_s
        return min(float(limit), bucket.level + refill)
