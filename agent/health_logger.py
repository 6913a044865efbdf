"""The health log beside each call: what an operator reads to know why a call sounded as it did.

The seed's lines, in this order::

    🔧 Provider Manager initialized:
      TTS: cartesia → local-tts → elevenlabs → free-tts
      STT: deepgram → google → whisper → free-stt
      LLM: openrouter → openai → google → free-llm
    🔊 Using TTS provider: cartesia            (🎤 STT, 🧠 LLM; at start and after each switch)
    ❌ TTS provider cartesia failed: 402 Payment Required
    🔄 Falling back to TTS provider: local-tts
    📊 Provider Health Status:                 (every HEALTH_CHECK_INTERVAL, and at the end)
      TTS: cartesia (failed) → local-tts (active) → elevenlabs (available) → free-tts (available)

Each line is one structlog event: the readable line is its message (what ``dev`` and
``console`` show) and everything in it is also a field (``health_event``, ``slot``,
``provider``, ``chain``, ``status``...), so JSON logs (``start``) are queried by field, never
by parsing the text. The detailed table (success rate, latency, credit, last error) is
``python -m agent status``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

import structlog

from plugins.observability.health_view import chain_status, compact_state, health_row
from plugins.observability.switches import SwitchEvent
from plugins.resilience.types import (
    Admission,
    BreakerState,
    Failure,
    GuardObserver,
    HealthStore,
    ProviderHealth,
)

log = structlog.get_logger("health")

#: The seed's order of slots in the health log.
SLOT_ORDER = ("tts", "stt", "llm")
SLOT_ICON = {"tts": "🔊", "stt": "🎤", "llm": "🧠"}

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
        return f"{failure.status} {reason}".strip()
    return failure.message or failure.kind.value.replace("_", " ")


class HealthLogger(GuardObserver):
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
        slots = self._slots()
        lines = [f"  {slot.upper()}: {' → '.join(self._chains[slot])}" for slot in slots]
        self._log.info(
            "\n".join(["🔧 Provider Manager initialized:", *lines]),
            health_event="chains",
            chains={slot: self._chains[slot] for slot in slots},
        )
        for slot in slots:
            if self._chains[slot]:
                self._using(slot, self._chains[slot][0])
        self._task = asyncio.create_task(self._periodic(), name="health-logger")

    def _slots(self) -> list[str]:
        known = [slot for slot in SLOT_ORDER if slot in self._chains]
        return known + [slot for slot in self._chains if slot not in SLOT_ORDER]

    def _using(self, slot: str, provider: str) -> None:
        self._active[slot] = provider
        icon = SLOT_ICON.get(slot, "•")
        self._log.info(
            f"{icon} Using {slot.upper()} provider: {provider}",
            health_event="using",
            slot=slot,
            provider=provider,
        )

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
        """The compact status: one line per slot, the chain with each provider's state."""
        wanted = {f"{slot}:{name}" for slot, names in self._chains.items() for name in names}
        healths = {h.key: h for h in await self._store.all_health() if h.key in wanted}
        lines: list[str] = []
        status: dict[str, list[dict[str, object]]] = {}
        for slot in self._slots():
            names = self._chains[slot]
            if not names:
                continue
            states: list[tuple[str, str]] = []
            rows: list[dict[str, object]] = []
            for name in names:
                # The floor is never guarded, so the store has no entry for it: always there.
                h = healths.get(f"{slot}:{name}") or ProviderHealth(
                    f"{slot}:{name}", BreakerState.CLOSED
                )
                active = self._active.get(slot) == name
                states.append((name, compact_state(h, active=active)))
                row = health_row(h, active=active).as_dict()
                row["compact"] = states[-1][1]
                rows.append(row)
            lines.append("  " + chain_status(slot, states))
            status[slot] = rows
        if lines:
            self._log.info(
                "\n".join(["📊 Provider Health Status:", *lines]),
                health_event="status",
                status=status,
            )

    # GuardObserver ---------------------------------------------------------------------------
    def on_attempt(self, key: str, *, is_probe: bool) -> None:
        if is_probe:
            slot, _, provider = key.partition(":")
            self._log.info(
                f"Probing {slot.upper()} provider {provider}", slot=slot, provider=provider
            )

    def on_success(self, key: str, *, latency_s: float | None, is_probe: bool = False) -> None:
        if is_probe:  # a probe served no caller: the slot is not on it yet
            return
        slot, _, provider = key.partition(":")
        self._active.setdefault(slot, provider)

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        slot, _, provider = key.partition(":")
        self._log.warning(
            f"❌ {slot.upper()} provider {provider} failed: {describe_failure(failure)}",
            health_event="failed",
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

    # switches (from plugins.observability.switches.SwitchTracker) ----------------------------
    def on_switch(self, event: SwitchEvent) -> None:
        self._skips_logged = {m for m in self._skips_logged if not m[0].startswith(event.slot)}
        if event.is_fallback:
            self._log.warning(
                f"🔄 Falling back to {event.slot.upper()} provider: {event.to_provider}",
                health_event="fallback",
                slot=event.slot,
                from_provider=event.from_provider,
                to_provider=event.to_provider,
                reason=event.reason,
            )
        else:
            self._log.info(
                f"✅ Returning to {event.slot.upper()} provider: {event.to_provider}",
                health_event="recovered",
                slot=event.slot,
                from_provider=event.from_provider,
                to_provider=event.to_provider,
            )
        self._using(event.slot, event.to_provider)
