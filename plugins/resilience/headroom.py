"""Headroom: how much of a provider's rate limit is left, as the provider itself reports it.

Providers that rate-limit per key say how close a key is on every response: OpenAI sends
``x-ratelimit-limit-requests: 60``, ``x-ratelimit-remaining-requests: 59`` and
``x-ratelimit-reset-requests: 1s`` (the time until the limit is *back to full*, not the wait
for one more request), and the same three for tokens; OpenRouter's own 429 carries
``X-RateLimit-Limit/-Remaining/-Reset`` with the reset as an epoch in milliseconds. Each
provider's definition names its headers with a :class:`RateLimitSignal`; this module reads
them into a :class:`Headroom` (one per dimension: requests, tokens) and estimates, later,
what is left: a *bucket* refills at a steady rate until full at the reset, a *window* is
full again at its reset time. A balancer passes over a member whose estimate is below its
reserve before the member answers 429 (see :mod:`plugins.fallback.balance`).

A reading holds no secret (numbers only), so it may be stored, shown and logged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from plugins.resilience.retry_after import MAX_RETRY_AFTER_S, parse_duration

ResetKind = Literal["bucket", "window"]

#: The share of a limit kept in reserve by default: a member estimated to have less left is
#: passed over while another member of its tier has more (other workers spend it too).
DEFAULT_RESERVE = 0.05


@dataclass(frozen=True)
class RateLimitSignal:
    """Where one dimension of a provider's rate limit is reported (header names, any case).

    ``reset``: ``bucket`` - a duration (``1s``, ``6m0s``, ``20ms``) until the limit is full
    again, refilling steadily meanwhile (OpenAI); ``window`` - when the window resets to
    full, as epoch seconds or milliseconds, or seconds from now (OpenRouter, GitHub-style).
    ``per_request``: each request spends one unit (requests), so requests sent since the
    reading count against it; otherwise (tokens) only the provider's next reading does.
    """

    dimension: str
    limit: str
    remaining: str
    reset: str
    reset_kind: ResetKind = "bucket"
    per_request: bool = True


@dataclass(frozen=True)
class Headroom:
    """One dimension's reading: ``remaining`` of ``limit`` at ``observed_at`` (epoch s),
    full again at ``full_at`` (epoch s)."""

    dimension: str
    limit: float
    remaining: float
    observed_at: float
    full_at: float
    reset_kind: ResetKind = "bucket"
    per_request: bool = True

    def estimate(self, now: float, spent_since: int = 0) -> float:
        """What is left at ``now``, after ``spent_since`` requests sent since the reading."""
        if now >= self.full_at:
            left = self.limit
        elif self.reset_kind == "window" or now <= self.observed_at:
            left = self.remaining
        else:  # a bucket refills steadily from the reading to full at full_at
            share = (now - self.observed_at) / (self.full_at - self.observed_at)
            left = self.remaining + (self.limit - self.remaining) * share
        if self.per_request:
            left -= spent_since
        return max(0.0, min(self.limit, left))

    def reserve(self, fraction: float = DEFAULT_RESERVE) -> float:
        """The units kept in reserve: ``fraction`` of the limit, at least one request."""
        return max(1.0 if self.per_request else 0.0, self.limit * fraction)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "limit": self.limit,
            "remaining": self.remaining,
            "observed_at": self.observed_at,
            "full_at": self.full_at,
            "reset_kind": self.reset_kind,
            "per_request": self.per_request,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Headroom:
        """A stored reading; raises ValueError when it is not one."""
        try:
            kind = str(data.get("reset_kind", "bucket"))
            if kind not in ("bucket", "window"):
                raise ValueError(f"reset_kind {kind!r}")
            reading = cls(
                dimension=str(data["dimension"]),
                limit=_number(data["limit"]),
                remaining=_number(data["remaining"]),
                observed_at=_number(data["observed_at"]),
                full_at=_number(data["full_at"]),
                reset_kind=kind,  # type: ignore[arg-type]
                per_request=bool(data.get("per_request", True)),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a headroom reading ({e})") from None
        if reading.limit <= 0 or reading.remaining < 0 or reading.full_at < reading.observed_at:
            raise ValueError("not a headroom reading (limit, remaining or reset out of range)")
        return reading


def _number(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def read_headroom(
    headers: Mapping[str, str], signals: Sequence[RateLimitSignal], *, now: float
) -> list[Headroom]:
    """The readings ``headers`` carry for ``signals`` (dimensions whose headers are missing
    or malformed are left out: a provider that sends nothing is simply not balanced by it)."""
    h = {k.lower(): v for k, v in headers.items()}
    out: list[Headroom] = []
    for signal in signals:
        raw = (h.get(signal.limit.lower()), h.get(signal.remaining.lower()))
        if raw[0] is None or raw[1] is None:
            continue
        try:
            limit, remaining = float(raw[0]), float(raw[1])
        except ValueError:
            continue
        if not (math.isfinite(limit) and math.isfinite(remaining)) or limit <= 0:
            continue
        remaining = min(max(remaining, 0.0), limit)
        full_in = _reset_in(h.get(signal.reset.lower()), signal.reset_kind, now)
        if full_in is None:
            continue
        out.append(
            Headroom(
                signal.dimension,
                limit,
                remaining,
                observed_at=now,
                full_at=now + full_in,
                reset_kind=signal.reset_kind,
                per_request=signal.per_request,
            )
        )
    return out


def _reset_in(value: str | None, kind: ResetKind, now: float) -> float | None:
    """Seconds until the limit is full again, clamped to the longest wait believed."""
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds is None:
        return None
    if kind == "window":
        if seconds > 1e12:  # epoch milliseconds
            seconds /= 1000.0
        if seconds > 1e9:  # epoch seconds
            seconds -= now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def tightest(readings: Sequence[Headroom], now: float, spent_since: int = 0) -> float:
    """The lowest share left over ``readings`` (1.0 without any): what ranks members."""
    shares = [r.estimate(now, spent_since) / r.limit for r in readings]
    return min(shares, default=1.0)


def below_reserve(
    readings: Sequence[Headroom],
    now: float,
    spent_since: int = 0,
    fraction: float = DEFAULT_RESERVE,
) -> bool:
    """Whether any dimension is estimated below its reserve: the member is close to a 429."""
    return any(r.estimate(now, spent_since) < r.reserve(fraction) for r in readings)


def refilled_at(readings: Sequence[Headroom], fraction: float = DEFAULT_RESERVE) -> float:
    """When (epoch s) every dimension is estimated back above its reserve, ignoring sends."""
    latest = 0.0
    for r in readings:
        need = r.reserve(fraction)
        if r.remaining >= need:
            continue
        if r.reset_kind == "window" or r.limit <= r.remaining:
            latest = max(latest, r.full_at)
            continue
        share = (need - r.remaining) / (r.limit - r.remaining)
        latest = max(latest, r.observed_at + (r.full_at - r.observed_at) * share)
    return latest
