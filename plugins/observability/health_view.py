"""How a provider's health reads to an operator: one state word and a table row.

Shared by the per-call health log and ``status`` so both say the same thing the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from plugins.resilience.types import BreakerState, FailureKind, ProviderHealth


def _clock_time(epoch: float) -> str:
    """``12:00:03``, or the date too when it is not today; never raises on a stored value."""
    try:
        when = time.localtime(epoch)
        today = time.localtime()
    except (OverflowError, OSError, ValueError, TypeError):
        return "an unreadable time"
    if when[:3] == today[:3]:
        return time.strftime("%H:%M:%S", when)
    return time.strftime("%Y-%m-%d %H:%M:%S", when)


def _number(value: object, spec: str) -> str | None:
    """``value`` formatted with ``spec``; None when a stored value is not a finite number."""
    try:
        number = float(str(value))
    except (TypeError, ValueError):
        return None
    return format(number, spec) if math.isfinite(number) else None


def state_label(h: ProviderHealth, *, active: bool = False, now: float | None = None) -> str:
    """active, available, failing, probing, failed, quota-exhausted, rate-limited until T...

    Honest: a provider whose last attempts failed is ``failing`` even while its breaker is
    still closed (it is tried again, but it is not "available" in any sense an operator means).
    """
    now = time.time() if now is None else now
    if h.state is BreakerState.KEY_REJECTED:
        return "key-rejected"
    if h.state is BreakerState.DISABLED:
        return "disabled"
    if h.state is BreakerState.FORCED_OPEN:
        return "forced-off"
    if h.state is BreakerState.HALF_OPEN:
        return "probing"
    if h.state is BreakerState.OPEN:
        until = f" until {_clock_time(h.open_until)}" if h.open_until and h.open_until > now else ""
        if h.last_failure is FailureKind.QUOTA_EXHAUSTED:
            return f"quota-exhausted{until}"
        if h.last_failure is FailureKind.RATE_LIMITED:
            return f"rate-limited{until}"
        if h.last_failure is FailureKind.BUDGET_EXHAUSTED:
            return f"budget-spent{until}"
        return f"failed{until}"
    if h.consecutive_failures:
        return f"failing ({h.consecutive_failures} in a row)"
    return "active" if active else "available"


def compact_state(h: ProviderHealth, *, active: bool = False, now: float | None = None) -> str:
    """The one word the compact status line shows: active, available, failing, probing, failed,
    disabled or key-rejected (the detail, e.g. "quota-exhausted until T", is in the table)."""
    if h.state in (BreakerState.DISABLED, BreakerState.FORCED_OPEN):
        return "disabled"
    if h.state is BreakerState.KEY_REJECTED:
        return "key-rejected"
    if h.state is BreakerState.OPEN:
        return "failed"
    if h.state is BreakerState.HALF_OPEN:
        return "probing"
    if h.consecutive_failures:
        return "failing"
    return "active" if active else "available"


def chain_status(slot: str, states: list[tuple[str, str]]) -> str:
    """``TTS: cartesia (failed) → local-tts (active) → free-tts (available)``."""
    return f"{slot.upper()}: " + " → ".join(f"{name} ({state})" for name, state in states)


@dataclass(frozen=True)
class HealthRow:
    slot: str
    provider: str
    state: str
    success_rate: str
    latency: str
    requests: int
    last_error: str
    credit: str = "-"

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def health_row(h: ProviderHealth, *, active: bool = False, now: float | None = None) -> HealthRow:
    slot, _, provider = h.key.partition(":")
    rate = h.success_rate
    p50, p95 = _number(h.latency_ms_p50, ".0f"), _number(h.latency_ms_p95, ".0f")
    latency = f"p50 {p50} ms / p95 {p95} ms" if p50 is not None and p95 is not None else "-"
    return HealthRow(
        slot=slot,
        provider=provider,
        state=state_label(h, active=active, now=now),
        success_rate=_number(rate, ".0%") or "-",
        latency=latency,
        requests=h.requests,
        last_error=h.last_error,
        credit=credit_label(h),
    )


def credit_label(h: ProviderHealth) -> str:
    """``8,200 characters left`` / ``$6.50 left``, from the provider's account API."""
    if not isinstance(h.credit, dict) or h.credit.get("remaining") is None:
        return "-"
    unit = str(h.credit.get("unit") or "")
    remaining = _number(h.credit["remaining"], ",.2f" if unit == "usd" else ",.0f")
    if remaining is None:
        return "unreadable"
    return f"${remaining} left" if unit == "usd" else f"{remaining} {unit} left"


def render_table(rows: list[HealthRow]) -> str:
    """A fixed-width table, one provider a line, grouped by slot in the order given."""
    if not rows:
        return "(no provider has been used yet)"
    headers = (
        "SLOT",
        "PROVIDER",
        "STATE",
        "SUCCESS",
        "LATENCY",
        "REQUESTS",
        "CREDIT",
        "LAST ERROR",
    )
    cells = [
        (r.slot.upper(), r.provider, r.state, r.success_rate, r.latency, str(r.requests),
         r.credit, r.last_error[:60])
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)
