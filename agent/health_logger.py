"""The health log beside each call: what an operator reads to know why a call sounded as it did.

At start it logs each slot's chain (``TTS: cartesia → local-tts → elevenlabs → free-tts``), then
every failure and switch as it happens (``TTS provider cartesia failed: 402 Payment Required``,
``Falling back to TTS provider: local-tts``), and on an interval a status table per slot from
the shared health store. Lines are structlog events: readable in dev, JSON in production.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

import structlog

from plugins.observability.health_view import health_row, render_table
from plugins.observability.switches import SwitchEvent
from plugins.resilience.types import (
    Admission,
    BreakerState,
    Failure,
    HealthStore,
    ProviderHealth,
)

log = structlog.get_logger("health")

_HTTP_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def describe_failure(failure: Failure) -> str:
    """``402 Payment Required`` for HTTP failures, the classified message otherwise."""
    if failure.status:
        reason = _HTTP_REASONS.get(failure.status, "")
        head = f"{failure.status} {reason}".strip()
        kind = failure.kind.value.replace("_", " ")
        return f"{head} ({kind})"
    return failure.message or failure.kind.value.replace("_", " ")


class HealthLogger:
    """A guard observer for one call, plus the periodic status table."""

    def __init__(
        self,
        store: HealthStore,
        chains: Mapping[str, Sequence[str]],
        *,
        interval_s: float = 30.0,
        call_id: str = "",
    ) -> None:
        self._store = store
        self._chains = {slot: list(names) for slot, names in chains.items()}
        self._interval_s = interval_s
        self._log = log.bind(call_id=call_id) if call_id else log
        self._active: dict[str, str] = {}
        self._skips_logged: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        for slot, names in self._chains.items():
            self._log.info(f"{slot.upper()}: {' → '.join(names)}", slot=slot, chain=names)
        self._task = asyncio.create_task(self._periodic(), name="health-logger")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.log_status()

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.log_status()
            except Exception:  # the health log must never take a call down
                self._log.exception("health status table failed")

    async def log_status(self) -> None:
        wanted = {f"{slot}:{name}" for slot, names in self._chains.items() for name in names}
        healths = {h.key: h for h in await self._store.all_health() if h.key in wanted}
        for slot, names in self._chains.items():
            # The floor is never guarded, so the store has no entry for it: it is always there.
            rows = [
                health_row(
                    healths.get(f"{slot}:{n}")
                    or ProviderHealth(f"{slot}:{n}", BreakerState.CLOSED),
                    active=self._active.get(slot) == n,
                )
                for n in names
            ]
            if not rows:
                continue
            self._log.info(
                f"{slot.upper()} provider status\n{render_table(rows)}",
                slot=slot,
                providers=[r.as_dict() for r in rows],
            )

    # GuardObserver ---------------------------------------------------------------------------
    def on_attempt(self, key: str, *, is_probe: bool) -> None:
        if is_probe:
            slot, _, provider = key.partition(":")
            self._log.info(
                f"Probing {slot.upper()} provider {provider}", slot=slot, provider=provider
            )

    def on_success(self, key: str, *, latency_s: float | None) -> None:
        slot, _, provider = key.partition(":")
        self._active.setdefault(slot, provider)

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        slot, _, provider = key.partition(":")
        self._log.warning(
            f"{slot.upper()} provider {provider} failed: {describe_failure(failure)}",
            slot=slot,
            provider=provider,
            kind=failure.kind.value,
            status=failure.status,
            retry_after_s=failure.retry_after_s,
            breaker=new_state.value,
        )

    def on_skip(self, key: str, admission: Admission) -> None:
        slot, _, provider = key.partition(":")
        marker = (key, admission.state.value)
        if marker in self._skips_logged:
            return  # once per state per call: a skipped provider is not news on every turn
        self._skips_logged.add(marker)
        self._log.info(
            f"Skipping {slot.upper()} provider {provider}: {admission.reason or admission.state.value}",
            slot=slot,
            provider=provider,
            state=admission.state.value,
        )

    def on_usage(self, key: str, unit: str, amount: float) -> None:
        return None

    # switches (from plugins.observability.switches.SwitchTracker) ----------------------------
    def on_switch(self, event: SwitchEvent) -> None:
        self._active[event.slot] = event.to_provider
        self._skips_logged = {m for m in self._skips_logged if not m[0].startswith(event.slot)}
        if event.is_fallback:
            self._log.warning(
                f"Falling back to {event.slot.upper()} provider: {event.to_provider}",
                slot=event.slot,
                from_provider=event.from_provider,
                to_provider=event.to_provider,
                reason=event.reason,
            )
        else:
            self._log.info(
                f"Returning to {event.slot.upper()} provider: {event.to_provider}",
                slot=event.slot,
                from_provider=event.from_provider,
                to_provider=event.to_provider,
            )
