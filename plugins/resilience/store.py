"""The health store: what every call on a machine (SQLite) or pool (Redis) knows of a provider.

Both backends keep one small document per provider, in two JSON parts (the breaker record,
which ``admit`` reads alone, and the statistics: request counters, a latency reservoir, the
last error), and change it only through an atomic read-modify-write of both parts, so the
breaker rules in :mod:`plugins.resilience.breaker` hold across processes exactly as they hold
in one. Usage per unit per period is kept beside the document as plain atomic increments. :class:`DocumentStore` holds all of that logic once; a backend only
supplies the atomic primitives.

``open_store(url, data_dir)`` picks the backend: ``redis://`` / ``rediss://`` -> Redis, anything
else -> SQLite (``None`` or empty: ``data_dir/health.sqlite3``; ``sqlite:////abs/file`` names it).
"""

from __future__ import annotations

import abc
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from plugins.resilience.breaker import (
    Breaker,
    BreakerConfig,
    BreakerRecord,
    Jitter,
    Period,
)
from plugins.resilience.headroom import Headroom
from plugins.resilience.scrub import scrub
from plugins.resilience.types import (
    Admission,
    BreakerState,
    Failure,
    FailureKind,
    HealthStore,
    ProviderHealth,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

SQLITE_FILENAME = "health.sqlite3"


class HealthStoreError(RuntimeError):
    """The store's backend failed (unreachable Redis, unwritable or locked SQLite file).

    A guard may catch it and fail open: a broken health store must never silence a call.
    """


def safe_url(url: str) -> str:
    """``scheme://host:port/path`` without user, password or query, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def period_id(period: Period, now: float) -> str:
    """``2026-11-25`` for a UTC day, ``2026-11`` for a UTC month."""
    return time.strftime("%Y-%m-%d" if period == "day" else "%Y-%m", time.gmtime(now))


@dataclass(frozen=True)
class StoreConfig:
    """What the stores keep and for how long."""

    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    latency_samples: int = 200  # reservoir of the most recent latencies, for p50/p95
    usage_period: Period = "month"  # period for units without an entry in unit_periods
    unit_periods: Mapping[str, Period] = field(default_factory=dict)  # e.g. {"usd": "day"}
    redis_prefix: str = "nsa:health:"
    # A store that hangs must not hold a turn: the guard asks before every attempt, and past
    # this deadline a process decides on its own (see ``store_failopen``).
    op_timeout_s: float = 0.5

    def __post_init__(self) -> None:
        if self.latency_samples < 1:
            raise ValueError("latency_samples must be >= 1")
        if self.op_timeout_s <= 0:
            raise ValueError("op_timeout_s must be > 0")
        for unit, period in {"(default)": self.usage_period, **self.unit_periods}.items():
            if period not in ("day", "month"):
                raise ValueError(
                    f"usage period for {unit} must be 'day' or 'month', not {period!r}"
                )

    def period_for(self, unit: str) -> Period:
        return self.unit_periods.get(unit, self.usage_period)


Parts = tuple[str, str]  # (breaker JSON, stats JSON) as stored; "" where nothing is stored


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _corrupt(exc: Exception) -> ValueError:
    return ValueError(
        f"stored provider health is not valid ({exc}); the record is reset on its next use"
    )


def breaker_from_json(raw: str) -> BreakerRecord:
    """The breaker part alone: all that ``admit`` needs, so the hot path parses little."""
    if not raw:
        return BreakerRecord()
    try:
        return BreakerRecord.from_dict(json.loads(raw))
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise _corrupt(exc) from exc


@dataclass
class ProviderDoc:
    """Everything the store keeps for one provider except usage.

    Stored as two parts, the breaker record and the statistics, so that ``admit`` reads only
    the small breaker part; both parts change together under one atomic update.
    """

    breaker: BreakerRecord = field(default_factory=BreakerRecord)
    requests: int = 0
    failures: int = 0
    last_failure: FailureKind | None = None
    last_error: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    updated_at: float = 0.0
    credit: dict[str, float | str | None] | None = None  # last read of the account's credit
    # the latest rate-limit readings the provider sent (Headroom.to_dict, one per dimension)
    headroom: list[dict[str, Any]] = field(default_factory=list)

    def to_parts(self) -> Parts:
        stats = {
            "credit": self.credit,
            "headroom": self.headroom,
            "requests": self.requests,
            "failures": self.failures,
            "last_failure": self.last_failure.value if self.last_failure else None,
            "last_error": self.last_error,
            "lat": self.latencies_ms,
            "updated_at": self.updated_at,
        }
        return _dumps(self.breaker.to_dict()), _dumps(stats)

    @classmethod
    def from_parts(cls, parts: Parts) -> ProviderDoc:
        breaker_raw, stats_raw = parts
        breaker = breaker_from_json(breaker_raw)
        if not stats_raw:
            return cls(breaker=breaker)
        try:
            data: dict[str, Any] = json.loads(stats_raw)
            last = data.get("last_failure")
            credit = data.get("credit")
            if credit is not None and not isinstance(credit, dict):
                raise TypeError(f"credit is {type(credit).__name__}, not an object")
            headroom = data.get("headroom") or []
            if not isinstance(headroom, list):
                raise TypeError(f"headroom is {type(headroom).__name__}, not a list")
            for reading in headroom:
                Headroom.from_dict(reading)  # a damaged reading resets the record, as any field
            return cls(
                breaker=breaker,
                requests=int(data.get("requests", 0)),
                failures=int(data.get("failures", 0)),
                last_failure=FailureKind(last) if last else None,
                last_error=str(data.get("last_error", "")),
                latencies_ms=[_finite(x) for x in data.get("lat", [])],
                updated_at=_finite(data.get("updated_at", 0.0)),
                credit=credit,
                headroom=list(headroom),
            )
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise _corrupt(exc) from exc


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def percentile(samples: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(q / 100.0 * len(ordered))))
    return ordered[rank - 1]


def apply_change(
    stored: Parts, change: Callable[[ProviderDoc], T], *, key: str = ""
) -> tuple[T, Parts | None]:
    """Run ``change`` on the stored document: its result and the parts to write (None: none).

    A record that does not parse is replaced by a fresh one (with a log line): one damaged row
    must not keep its provider off until someone deletes it by hand.
    """
    try:
        doc = ProviderDoc.from_parts(stored)
    except ValueError as exc:
        log.warning(
            "health store record was corrupt; reset it to a fresh (closed) record",
            provider=key,
            error=str(exc),
        )
        doc, stored = ProviderDoc(), ("", "")
    before = doc.to_parts()
    result = change(doc)
    after = doc.to_parts()
    return result, (after if after != before or not stored[0] else None)


class DocumentStore(abc.ABC):
    """The :class:`HealthStore` rules over an atomic per-provider document; backends subclass.

    ``clock`` and ``jitter`` are injectable for tests; every public method also takes ``now``.
    ``register(key, fingerprint)`` (not in the protocol) tells the breaker which key is
    configured, see :meth:`plugins.resilience.breaker.Breaker.register`.
    """

    #: The store's place for messages (``redis://host:port/db``, ``sqlite:///path``), no secret.
    where: str = "memory"

    def __init__(
        self,
        config: StoreConfig | None = None,
        *,
        clock: Clock = time.time,
        jitter: Jitter | None = None,
    ) -> None:
        self.config = config or StoreConfig()
        self.breaker = Breaker(self.config.breaker, jitter)
        self._clock = clock

    # -- backend primitives ----------------------------------------------------------------

    @abc.abstractmethod
    async def _read_breaker(self, key: str) -> str:
        """The stored breaker part ("" if none), read without locking."""

    @abc.abstractmethod
    async def _read(self, key: str) -> Parts:
        """Both stored parts ("" where none), read without locking."""

    @abc.abstractmethod
    async def _update(self, key: str, change: Callable[[ProviderDoc], T]) -> T:
        """Apply ``change`` to the document atomically across processes; write if it changed.

        Backends run it through :func:`apply_change`.
        """

    @abc.abstractmethod
    async def _add_usage(self, key: str, field_name: str, amount: float) -> float:
        """Atomically add to one usage counter and return its new total."""

    @abc.abstractmethod
    async def _usage(self, key: str) -> dict[str, float]:
        """All usage counters of one provider, ``unit@period`` -> amount."""

    @abc.abstractmethod
    async def _keys(self) -> list[str]:
        """Every provider key the store has seen."""

    @abc.abstractmethod
    async def _ping(self, now: float) -> None:
        """One real round trip that reads and writes, outside every provider's record."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def ping(self, *, now: float | None = None) -> None:
        """Raise (:class:`HealthStoreError`) unless the store can be read and written now.

        What ``doctor`` and a process that fell open (see ``store_failopen``) ask: a read
        alone would call a read-only or full disk healthy.
        """
        await self._ping(self._now(now))

    # -- HealthStore -----------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    async def admit(self, key: str, *, now: float | None = None) -> Admission:
        t = self._now(now)
        try:
            rec = breaker_from_json(await self._read_breaker(key))
        except ValueError:  # a damaged record: decide under the lock, which resets it
            return await self._update(key, lambda d: self.breaker.admit(d.breaker, t))
        if (problem := self.breaker.impossible(rec, t)) is not None:
            await self._reset_breaker(key, problem, t)
            return await self._update(key, lambda d: self.breaker.admit(d.breaker, t))
        before = rec.to_dict()
        admission = self.breaker.admit(rec, t)
        if rec.to_dict() == before:
            return admission  # nothing to take (closed, open, probe busy): no write needed
        # Taking the half-open probe: decide again under the lock, someone may have won it.
        return await self._update(key, lambda d: self.breaker.admit(d.breaker, t))

    async def _reset_breaker(self, key: str, problem: str, now: float) -> None:
        log.warning(
            "health store record was corrupt; reset it to a fresh (closed) record",
            provider=key,
            error=problem,
        )

        def change(doc: ProviderDoc) -> None:
            if self.breaker.impossible(doc.breaker, now) is not None:  # still, under the lock
                doc.breaker = BreakerRecord(fingerprint=doc.breaker.fingerprint)

        await self._update(key, change)

    async def record_success(
        self, key: str, *, latency_s: float | None, now: float | None = None
    ) -> None:
        t = self._now(now)
        keep = self.config.latency_samples

        def change(doc: ProviderDoc) -> None:
            doc.requests += 1
            if latency_s is not None:
                doc.latencies_ms = [*doc.latencies_ms, round(latency_s * 1000.0, 2)][-keep:]
            doc.updated_at = t
            self.breaker.record_success(doc.breaker, t)

        await self._update(key, change)

    async def record_failure(
        self, key: str, failure: Failure, *, now: float | None = None
    ) -> BreakerState:
        t = self._now(now)
        message = scrub(failure.message)  # second net: a hand-built Failure

        def change(doc: ProviderDoc) -> BreakerState:
            doc.requests += 1
            if failure.kind.counts_against_health:
                doc.failures += 1
            doc.last_failure = failure.kind
            doc.last_error = message
            doc.updated_at = t
            return self.breaker.record_failure(doc.breaker, failure, t)

        return await self._update(key, change)

    async def add_usage(
        self, key: str, unit: str, amount: float, *, now: float | None = None
    ) -> float:
        if not unit or "@" in unit:
            raise ValueError(f"usage unit must be a non-empty name without '@', not {unit!r}")
        t = self._now(now)
        field_name = f"{unit}@{period_id(self.config.period_for(unit), t)}"
        return await self._add_usage(key, field_name, float(amount))

    async def register(
        self, key: str, fingerprint: str, *, now: float | None = None
    ) -> BreakerState:
        """Record the fingerprint of the key now configured for ``key``; see the class docstring."""
        t = self._now(now)
        return await self._update(key, lambda d: self.breaker.register(d.breaker, fingerprint, t))

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
        t = self._now(now)

        def change(doc: ProviderDoc) -> None:
            doc.credit = {
                "remaining": remaining,
                "limit": limit,
                "unit": unit,
                "reset_at": reset_at,
                "checked_at": t,
            }

        await self._update(key, change)

    async def record_headroom(self, key: str, readings: list[Headroom]) -> None:
        """The provider's latest rate-limit readings for ``key``, for every worker to see.

        A reading older than the one stored (another worker's, sent later) is kept out, per
        dimension, so the pool converges on the freshest figure whatever order writes land in.
        """

        def change(doc: ProviderDoc) -> None:
            kept = {r["dimension"]: r for r in doc.headroom}
            for reading in readings:
                old = kept.get(reading.dimension)
                if old is None or float(old["observed_at"]) <= reading.observed_at:
                    kept[reading.dimension] = reading.to_dict()
            doc.headroom = [kept[d] for d in sorted(kept)]

        await self._update(key, change)

    async def headroom(self, key: str) -> list[Headroom]:
        """The stored rate-limit readings of ``key`` (none when it never reported any)."""
        try:
            doc = ProviderDoc.from_parts(await self._read(key))
        except ValueError:
            return []
        return [Headroom.from_dict(r) for r in doc.headroom]

    async def set_override(self, key: str, state: BreakerState | None) -> None:
        self.breaker.set_override(BreakerRecord(), state)  # validate before touching the store
        await self._update(key, lambda d: self.breaker.set_override(d.breaker, state))

    async def health(self, key: str) -> ProviderHealth:
        try:
            doc = ProviderDoc.from_parts(await self._read(key))
        except ValueError:
            await self._update(key, lambda d: None)  # resets the damaged record
            doc = ProviderDoc.from_parts(await self._read(key))
        return self._to_health(key, doc, await self._usage(key))

    async def all_health(self) -> list[ProviderHealth]:
        return [await self.health(key) for key in sorted(await self._keys())]

    def _to_health(self, key: str, doc: ProviderDoc, usage: dict[str, float]) -> ProviderHealth:
        now = self._clock()
        rec = doc.breaker
        current: dict[str, float] = {}
        for field_name, amount in usage.items():
            unit, _, pid = field_name.rpartition("@")
            if pid == period_id(self.config.period_for(unit), now):
                current[unit] = amount
        state = self.breaker.view_state(rec, now)
        return ProviderHealth(
            key=key,
            state=state,
            last_failure=doc.last_failure,
            last_error=doc.last_error,
            open_until=rec.open_until if rec.state is BreakerState.OPEN else None,
            consecutive_failures=rec.consecutive_failures,
            trips=rec.trips,
            requests=doc.requests,
            failures=doc.failures,
            latency_ms_p50=percentile(doc.latencies_ms, 50),
            latency_ms_p95=percentile(doc.latencies_ms, 95),
            usage=current,
            updated_at=doc.updated_at,
            credit=doc.credit,
            headroom=[Headroom.from_dict(r) for r in doc.headroom],
        )


def open_store(
    url: str | None,
    data_dir: Path,
    *,
    config: StoreConfig | None = None,
    clock: Clock = time.time,
    jitter: Jitter | None = None,
) -> DocumentStore:
    """The store for a settings value: ``redis://``/``rediss://`` -> Redis, else SQLite.

    ``sqlite:////abs/path.sqlite3`` (or ``sqlite:///relative/path``) names the SQLite file; ``None`` or ``""`` uses
    ``data_dir/health.sqlite3``.
    """
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        from plugins.resilience.store_redis import RedisHealthStore

        return RedisHealthStore(url, config=config, clock=clock, jitter=jitter)
    from plugins.resilience.store_sqlite import SqliteHealthStore

    if not url:
        path = Path(data_dir) / SQLITE_FILENAME
    elif url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))  # SQLAlchemy style: 4 slashes = absolute
    else:
        scheme = url.partition("://")[0] + "://" if "://" in url else "a value without a scheme"
        raise ValueError(
            f"health store URL with {scheme} is not supported: use redis://host:port/db, "
            "rediss://..., sqlite:////abs/path.sqlite3, or leave it empty for a SQLite file in "
            "the data directory"
        )
    return SqliteHealthStore(path, config=config, clock=clock, jitter=jitter)


def _check_protocol(store: DocumentStore) -> HealthStore:
    return store  # mypy proves every DocumentStore satisfies the HealthStore protocol
