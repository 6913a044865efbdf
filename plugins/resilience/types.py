"""The contract shared by the breaker, the stores, the guards and the observers.

Kept in one small module so that each piece can be written and tested against it alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from plugins.resilience.headroom import Headroom


class FailureKind(enum.StrEnum):
    """Why an attempt failed; decides what the breaker does with it."""

    QUOTA_EXHAUSTED = "quota_exhausted"  # 402, quota messages: long cooldown or until reset
    RATE_LIMITED = "rate_limited"  # 429: honour Retry-After exactly
    KEY_REJECTED = "key_rejected"  # 401/403: stays off until settings change
    SERVER_ERROR = "server_error"  # 5xx
    CONNECTION_ERROR = "connection_error"  # refused, reset, DNS
    TIMEOUT = "timeout"  # first token/audio/result deadline missed
    STALL = "stall"  # stream went quiet mid-way
    IN_BAND_ERROR = "in_band_error"  # error frame / error JSON inside a 200
    EMPTY_RESULT = "empty_result"  # empty reply, silent audio, no transcript
    TRUNCATED = "truncated"  # stream cut before completion
    REQUEST_FAULT = "request_fault"  # context too long, content filter: not the provider's health
    BUDGET_EXHAUSTED = "budget_exhausted"  # our own spending cap for the period
    UNKNOWN = "unknown"

    @property
    def counts_against_health(self) -> bool:
        return self is not FailureKind.REQUEST_FAULT


@dataclass(frozen=True)
class Failure:
    """A classified failure. ``message`` must never contain a secret."""

    kind: FailureKind
    message: str
    status: int | None = None
    retry_after_s: float | None = None  # from Retry-After / rate-limit reset headers
    reset_at: float | None = None  # epoch seconds when a quota resets, if the provider said


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"  # operator override
    DISABLED = "disabled"  # operator override: never tried
    KEY_REJECTED = "key_rejected"  # stays off until the key (settings fingerprint) changes


@dataclass(frozen=True)
class Admission:
    """The store's answer to "may I try this provider now?"."""

    allowed: bool
    state: BreakerState
    is_probe: bool = False  # True: this attempt is the single half-open probe
    reason: str = ""  # why not, e.g. "rate_limited until 12:00:03"
    until: float | None = None  # epoch seconds when it may be tried again


@dataclass
class ProviderHealth:
    """What ``status`` and the health logger show for one provider."""

    key: str  # ProviderSpec.key, e.g. "tts:cartesia"
    state: BreakerState
    last_failure: FailureKind | None = None
    last_error: str = ""
    open_until: float | None = None
    consecutive_failures: int = 0
    trips: int = 0
    requests: int = 0
    failures: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    usage: dict[str, float] = field(default_factory=dict)  # unit -> amount this period
    updated_at: float = 0.0
    # last read of the provider's account credit: remaining, limit, unit, reset_at, checked_at
    credit: dict[str, float | str | None] | None = None
    # the provider's last rate-limit readings (requests, tokens...), shared by the pool
    headroom: list[Headroom] = field(default_factory=list)

    @property
    def success_rate(self) -> float | None:
        if self.requests == 0:
            return None
        return 1.0 - self.failures / self.requests


class HealthStore(Protocol):
    """Breaker and usage state shared by every call on a machine (SQLite) or a pool (Redis).

    Every method is atomic across processes. ``now`` is injectable for tests.
    """

    async def admit(self, key: str, *, now: float | None = None) -> Admission: ...

    async def record_success(
        self, key: str, *, latency_s: float | None, now: float | None = None
    ) -> None: ...

    async def record_failure(
        self, key: str, failure: Failure, *, now: float | None = None
    ) -> BreakerState: ...

    async def add_usage(
        self, key: str, unit: str, amount: float, *, now: float | None = None
    ) -> float: ...

    async def health(self, key: str) -> ProviderHealth: ...

    async def all_health(self) -> list[ProviderHealth]: ...

    async def set_override(self, key: str, state: BreakerState | None) -> None: ...

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
        """What the provider's account API last said about remaining credit."""
        ...

    async def record_headroom(self, key: str, readings: list[Headroom]) -> None:
        """The provider's latest rate-limit readings (the freshest per dimension is kept)."""
        ...

    async def headroom(self, key: str) -> list[Headroom]:
        """The stored rate-limit readings, for a balancer in any worker of the pool."""
        ...

    async def register(self, key: str, fingerprint: str) -> BreakerState:
        """Record which key (a hash of it, never the key) is configured; a key rejected under
        another fingerprint is lifted."""
        ...

    async def aclose(self) -> None: ...


class GuardObserver:
    """Receives what the guards see; the health logger, the metrics and the usage meter do.

    A base class of no-op methods, called directly by the guard (never looked up by name): an
    observer overrides what it needs, and a new event is one new method here, not a change to
    every observer. An exception raised by an observer is logged by the guard and never
    reaches the call.
    """

    def on_attempt(self, key: str, *, is_probe: bool) -> None:
        """A request (``is_probe``: a synthetic probe) was admitted and is being sent."""

    def on_success(self, key: str, *, latency_s: float | None, is_probe: bool = False) -> None:
        """The provider answered (a probe's success means it is back)."""

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        """An attempt (or a probe) failed; ``new_state`` is the breaker after recording it."""

    def on_skip(self, key: str, admission: Admission) -> None:
        """The store refused the provider; the chain moved on without a request."""

    def on_usage(self, key: str, unit: str, amount: float) -> None:
        """The provider was used: ``amount`` of ``unit`` (characters, audio seconds, tokens)."""

    def on_cost(self, key: str, usd: float) -> None:
        """What that usage cost, at the catalog's (or the settings') price."""

    def on_headroom(self, key: str, readings: list[Headroom]) -> None:
        """The provider reported how much of its rate limit is left (an answer's headers)."""
