"""The circuit breaker for one provider: a pure state machine with no I/O and no clock.

Why pure: the same rules must hold whether the state lives in SQLite (one machine) or Redis (a
pool), and every decision must be testable with a fake clock. A store loads a
:class:`BreakerRecord`, calls one :class:`Breaker` method with ``now`` and writes the record back
inside one atomic read-modify-write; that is what makes the single half-open probe hold across
processes.

Semantics (Resilience4j's, tuned for voice volumes where 100 calls never arrive in a window):

* CLOSED trips to OPEN on ``consecutive_failures`` failures in a row, **or** when the failure
  rate over the last ``window_s`` seconds reaches ``failure_rate_threshold`` once at least
  ``minimum_calls`` outcomes are in the window.
* The open time (when the next recovery probe may run) backs off exponentially with full
  jitter (AWS's "full jitter"): ``ceiling = min(max_open_s, base_open_s * 2 ** (trips - 1))``,
  open for a uniform draw in ``[min_open_s, ceiling]``. With the defaults the ceilings are
  5, 10, 20, 40, 60, 60... s. Full jitter spreads the probes of a pool that tripped together;
  ``full_jitter=False`` opens for exactly the ceiling. ``trips`` returns to 0 after
  ``healthy_period_s`` spent closed.
* OPEN moves to HALF_OPEN lazily, on the first ``admit`` after the open time. HALF_OPEN admits
  exactly one probe at a time under a lease that expires after ``probe_lease_s``, so a prober
  that crashed does not wedge the provider. The probe's success closes the breaker; its failure
  re-opens it with a longer open time.
* Some failures open at once, without waiting for the counting rules:

  - RATE_LIMITED with ``retry_after_s``: open until exactly ``now + retry_after_s`` (no jitter).
    Without it: an ordinary trip (growing open time).
  - QUOTA_EXHAUSTED: open until ``reset_at`` when the provider said, else ``quota_cooldown_s``.
  - BUDGET_EXHAUSTED (our own spending cap): open until ``reset_at`` when given, else until the
    end of the current ``budget_period`` (UTC day or month).
  - KEY_REJECTED: the KEY_REJECTED state, which no clock ends. It clears only when a *different*
    key fingerprint is registered (see :meth:`Breaker.register`).

* REQUEST_FAULT (the request's own fault: context too long, content filter) never counts; it
  only frees a half-open probe lease so the next probe may run.
* Operator overrides sit above the state machine: FORCED_OPEN and DISABLED both refuse every
  attempt (our contract: DISABLED means "never tried", unlike Resilience4j's "always permit").
  Outcomes that still arrive are recorded underneath, so clearing the override reveals the
  breaker's real state.

Key fingerprints: the store is given a fingerprint per provider key (a hash of the API key,
never the key; :func:`key_fingerprint`) with :meth:`Breaker.register`. A KEY_REJECTED failure
remembers the fingerprint it happened under; registering a different fingerprint (the operator
fixed the key and restarted) clears it and closes the breaker. A guard should register before
its first ``admit``: a rejection recorded before any registration is lifted by the first
registration of any fingerprint.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from plugins.resilience.retry_after import MAX_RESET_AHEAD_S, bounded_reset_at, bounded_wait
from plugins.resilience.types import Admission, BreakerState, Failure, FailureKind

Period = Literal["day", "month"]
Jitter = Callable[[], float]

_BASE_STATES = frozenset(
    {BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.KEY_REJECTED}
)
_OVERRIDES = frozenset({BreakerState.FORCED_OPEN, BreakerState.DISABLED})


def key_fingerprint(secret: str | None) -> str:
    """A short, non-reversible fingerprint of an API key (or of any settings that identify it).

    Only tells "same key or not". 12 hex digits of SHA-256 over a domain-separated input: enough
    to notice a change, useless for recovering a high-entropy key.
    """
    if not secret:
        return "none"
    digest = hashlib.sha256(b"never-silent/key-fingerprint\x00" + secret.encode()).hexdigest()
    return digest[:12]


@dataclass(frozen=True)
class BreakerConfig:
    """Breaker tuning. Defaults suit voice traffic: a few calls a minute per provider."""

    consecutive_failures: int = 3
    failure_rate_threshold: float = 0.5
    window_s: int = 30
    minimum_calls: int = 4
    base_open_s: float = 5.0
    max_open_s: float = 60.0
    min_open_s: float = 1.0  # full jitter never probes sooner than this
    full_jitter: bool = True
    quota_cooldown_s: float = 3600.0
    probe_lease_s: float = 15.0
    healthy_period_s: float = 60.0
    budget_period: Period = "day"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.consecutive_failures < 1:
            problems.append("consecutive_failures must be >= 1")
        if not 0.0 < self.failure_rate_threshold <= 1.0:
            problems.append("failure_rate_threshold must be in (0, 1]")
        if self.window_s < 1:
            problems.append("window_s must be >= 1 (whole seconds)")
        if self.minimum_calls < 1:
            problems.append("minimum_calls must be >= 1")
        for name in ("base_open_s", "max_open_s", "quota_cooldown_s", "probe_lease_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        if self.max_open_s < self.base_open_s:
            problems.append("max_open_s must be >= base_open_s")
        if not 0 <= self.min_open_s <= self.base_open_s:
            problems.append("min_open_s must be >= 0 and <= base_open_s")
        if self.healthy_period_s < 0:
            problems.append("healthy_period_s must be >= 0")
        if self.budget_period not in ("day", "month"):
            problems.append("budget_period must be 'day' or 'month'")
        if problems:
            raise ValueError("invalid breaker settings: " + "; ".join(problems))


@dataclass
class BreakerRecord:
    """The breaker's whole state for one provider; serialises to a small JSON-able dict."""

    state: BreakerState = BreakerState.CLOSED  # CLOSED, OPEN, HALF_OPEN or KEY_REJECTED
    override: BreakerState | None = None  # FORCED_OPEN or DISABLED, set by an operator
    open_until: float | None = None
    opened_by: FailureKind | None = None
    trips: int = 0  # consecutive trips, drives the growing open time
    consecutive_failures: int = 0
    window: list[list[int]] = field(default_factory=list)  # [epoch second, calls, failures]
    probe_until: float | None = None  # half-open probe lease expiry
    closed_at: float | None = None
    fingerprint: str | None = None  # last registered key fingerprint
    rejected_fingerprint: str | None = None  # fingerprint a KEY_REJECTED happened under

    @property
    def effective_state(self) -> BreakerState:
        return self.override or self.state

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "override": self.override.value if self.override else None,
            "open_until": self.open_until,
            "opened_by": self.opened_by.value if self.opened_by else None,
            "trips": self.trips,
            "consecutive_failures": self.consecutive_failures,
            "window": [list(b) for b in self.window],
            "probe_until": self.probe_until,
            "closed_at": self.closed_at,
            "fingerprint": self.fingerprint,
            "rejected_fingerprint": self.rejected_fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BreakerRecord:
        try:
            state = BreakerState(data.get("state", "closed"))
            override_raw = data.get("override")
            override = BreakerState(override_raw) if override_raw else None
            opened_raw = data.get("opened_by")
            record = cls(
                state=state,
                override=override,
                open_until=_opt_float(data.get("open_until")),
                opened_by=FailureKind(opened_raw) if opened_raw else None,
                trips=int(data.get("trips", 0)),
                consecutive_failures=int(data.get("consecutive_failures", 0)),
                window=[[int(s), int(c), int(f)] for s, c, f in data.get("window", [])],
                probe_until=_opt_float(data.get("probe_until")),
                closed_at=_opt_float(data.get("closed_at")),
                fingerprint=data.get("fingerprint"),
                rejected_fingerprint=data.get("rejected_fingerprint"),
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(
                f"stored breaker state is not valid ({exc}); the health store resets such "
                "a record on its next use"
            ) from exc
        if record.state not in _BASE_STATES or (
            record.override is not None and record.override not in _OVERRIDES
        ):
            raise ValueError(
                f"stored breaker state has impossible states ({state.value}, {override_raw}); "
                "the health store resets such a record on its next use"
            )
        return record


def _opt_float(value: Any) -> float | None:
    """A stored time: None or a finite number (``Infinity`` in a record is corruption)."""
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"time {value!r} is not a finite number")
    return number


def _clock_text(epoch: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(epoch))


def period_end(period: Period, now: float) -> float:
    """Epoch seconds at which the UTC day or month containing ``now`` ends."""
    t = time.gmtime(now)
    if period == "day":
        return float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


class Breaker:
    """Applies the rules to a :class:`BreakerRecord`. Holds configuration only, never state."""

    def __init__(self, config: BreakerConfig | None = None, jitter: Jitter | None = None) -> None:
        self.config = config or BreakerConfig()
        self._jitter: Jitter = jitter or random.random

    # -- admission -------------------------------------------------------------------------

    def admit(self, rec: BreakerRecord, now: float) -> Admission:
        """May a call try this provider now? Mutates ``rec`` only when it takes a probe lease."""
        if rec.override is BreakerState.FORCED_OPEN:
            return Admission(False, rec.override, reason="forced open by an operator")
        if rec.override is BreakerState.DISABLED:
            return Admission(False, rec.override, reason="disabled by an operator")
        if rec.state is BreakerState.CLOSED:
            return Admission(True, BreakerState.CLOSED)
        if rec.state is BreakerState.KEY_REJECTED:
            return Admission(
                False,
                rec.state,
                reason="key rejected: fix the API key; it is tried again once the key changes",
            )
        if rec.state is BreakerState.OPEN:
            if rec.open_until is not None and now < rec.open_until:
                cause = rec.opened_by.value if rec.opened_by else "open"
                return Admission(
                    False,
                    rec.state,
                    reason=f"{cause} until {_clock_text(rec.open_until)}",
                    until=rec.open_until,
                )
            rec.state = BreakerState.HALF_OPEN
            rec.probe_until = None
        # HALF_OPEN: exactly one probe under a lease.
        if rec.probe_until is not None and now < rec.probe_until:
            return Admission(
                False,
                BreakerState.HALF_OPEN,
                reason="half-open: another call is probing",
                until=rec.probe_until,
            )
        rec.probe_until = now + self.config.probe_lease_s
        return Admission(True, BreakerState.HALF_OPEN, is_probe=True)

    # -- outcomes --------------------------------------------------------------------------

    def record_success(self, rec: BreakerRecord, now: float) -> BreakerState:
        self._decay(rec, now)
        if rec.state is BreakerState.HALF_OPEN:
            self._close(rec, now)
        elif rec.state is BreakerState.CLOSED:
            rec.consecutive_failures = 0
            self._count(rec, now, failed=False)
        # OPEN / KEY_REJECTED: a call admitted before the breaker opened finished late;
        # it says nothing about whether the open time is over.
        return rec.effective_state

    def record_failure(self, rec: BreakerRecord, failure: Failure, now: float) -> BreakerState:
        kind = failure.kind
        self._decay(rec, now)
        if not kind.counts_against_health:
            if rec.state is BreakerState.HALF_OPEN:
                rec.probe_until = None  # the probe proved nothing: let the next one run
            return rec.effective_state
        if kind is FailureKind.KEY_REJECTED:
            rec.state = BreakerState.KEY_REJECTED
            rec.rejected_fingerprint = rec.fingerprint
            rec.opened_by = kind
            rec.open_until = None
            rec.probe_until = None
            self._reset_counts(rec)
            return rec.effective_state
        if rec.state is BreakerState.KEY_REJECTED:
            return rec.effective_state
        until = self._fixed_open_until(failure, now)
        if until is not None:
            if rec.state is BreakerState.OPEN and rec.open_until is not None:
                until = max(until, rec.open_until)
            self._open(rec, kind, until)
            return rec.effective_state
        if kind is FailureKind.RATE_LIMITED or rec.state is BreakerState.HALF_OPEN:
            self._trip(rec, kind, now)
            return rec.effective_state
        if rec.state is BreakerState.OPEN:
            return rec.effective_state  # a late failure from before the trip
        rec.consecutive_failures += 1
        calls, failures = self._count(rec, now, failed=True)
        cfg = self.config
        if rec.consecutive_failures >= cfg.consecutive_failures or (
            calls >= cfg.minimum_calls and failures / calls >= cfg.failure_rate_threshold
        ):
            self._trip(rec, kind, now)
        return rec.effective_state

    # -- operator and settings -------------------------------------------------------------

    def set_override(self, rec: BreakerRecord, state: BreakerState | None) -> BreakerState:
        if state is not None and state not in _OVERRIDES:
            raise ValueError(
                f"override must be forced_open, disabled or None (to clear), not {state.value!r}"
            )
        rec.override = state
        return rec.effective_state

    def register(self, rec: BreakerRecord, fingerprint: str, now: float) -> BreakerState:
        """Tell the breaker which key is configured now; a new key lifts KEY_REJECTED."""
        if not fingerprint:
            raise ValueError("fingerprint must be a non-empty string (use key_fingerprint())")
        rec.fingerprint = fingerprint
        if rec.state is BreakerState.KEY_REJECTED and fingerprint != rec.rejected_fingerprint:
            rec.trips = 0
            self._close(rec, now)
        return rec.effective_state

    def impossible(self, rec: BreakerRecord, now: float) -> str | None:
        """Why ``rec`` cannot have been written by these rules (a time too far ahead), or None.

        Every time the breaker writes is bounded (see :mod:`plugins.resilience.retry_after`);
        a record that says otherwise is damaged or from a version without the bounds, and would
        keep its provider off for years.
        """
        cfg = self.config
        horizon = now + max(MAX_RESET_AHEAD_S, cfg.quota_cooldown_s, cfg.max_open_s) + 86400.0
        if rec.open_until is not None and rec.open_until > horizon:
            return f"open_until {rec.open_until:.6g} is beyond any time the breaker sets"
        if rec.probe_until is not None and rec.probe_until > now + cfg.probe_lease_s + 86400.0:
            return f"probe_until {rec.probe_until:.6g} is beyond any probe lease"
        return None

    def view_state(self, rec: BreakerRecord, now: float) -> BreakerState:
        """The state as a reader should see it: an expired OPEN already counts as HALF_OPEN."""
        if rec.override is not None:
            return rec.override
        if rec.state is BreakerState.OPEN and rec.open_until is not None and now >= rec.open_until:
            return BreakerState.HALF_OPEN
        return rec.state

    # -- internals -------------------------------------------------------------------------

    def _fixed_open_until(self, failure: Failure, now: float) -> float | None:
        # Provider-given times are held to the same bounds however the Failure was built.
        kind = failure.kind
        wait = bounded_wait(failure.retry_after_s)
        reset_at = bounded_reset_at(failure.reset_at, now=now)
        if kind is FailureKind.RATE_LIMITED and wait is not None:
            return now + wait
        if kind is FailureKind.QUOTA_EXHAUSTED:
            if reset_at is not None:
                return reset_at
            if wait:
                return now + wait
            return now + self.config.quota_cooldown_s
        if kind is FailureKind.BUDGET_EXHAUSTED:
            if reset_at is not None:
                return reset_at
            return period_end(self.config.budget_period, now)
        return None

    def _trip(self, rec: BreakerRecord, kind: FailureKind, now: float) -> None:
        rec.trips += 1
        self._open(rec, kind, now + self.open_time(rec.trips))

    def open_time(self, trips: int) -> float:
        """How long the ``trips``-th trip in a row stays open (see the module docstring)."""
        cfg = self.config
        ceiling = min(cfg.max_open_s, cfg.base_open_s * 2.0 ** max(0, trips - 1))
        if not cfg.full_jitter:
            return ceiling
        draw = min(max(self._jitter(), 0.0), 1.0)  # uniform in [0, 1); injected in tests
        return cfg.min_open_s + (ceiling - cfg.min_open_s) * (1.0 - draw)

    def _open(self, rec: BreakerRecord, kind: FailureKind, until: float) -> None:
        rec.state = BreakerState.OPEN
        rec.opened_by = kind
        rec.open_until = until
        rec.probe_until = None
        rec.closed_at = None
        self._reset_counts(rec)

    def _close(self, rec: BreakerRecord, now: float) -> None:
        rec.state = BreakerState.CLOSED
        rec.open_until = None
        rec.opened_by = None
        rec.probe_until = None
        rec.closed_at = now
        self._reset_counts(rec)

    @staticmethod
    def _reset_counts(rec: BreakerRecord) -> None:
        rec.consecutive_failures = 0
        rec.window = []

    def _decay(self, rec: BreakerRecord, now: float) -> None:
        if (
            rec.state is BreakerState.CLOSED
            and rec.trips
            and rec.closed_at is not None
            and now - rec.closed_at >= self.config.healthy_period_s
        ):
            rec.trips = 0

    def _count(self, rec: BreakerRecord, now: float, *, failed: bool) -> tuple[int, int]:
        """Add one outcome to the time window; return (calls, failures) inside the window."""
        second = int(now)
        oldest = second - self.config.window_s
        window = [b for b in rec.window if b[0] > oldest]
        bucket = next((b for b in window if b[0] == second), None)
        if bucket is None:
            window.append([second, 1, int(failed)])
        else:
            bucket[1] += 1
            bucket[2] += int(failed)
        rec.window = window
        return sum(b[1] for b in window), sum(b[2] for b in window)
