"""Which provider a call is on in each slot, when that changes, and why.

LiveKit's ``FallbackAdapter`` uses the first provider it believes available, so a slot's
current provider is the first available one in chain order; it changes when the adapter marks
one unavailable (after a failure or a guard's refusal) or available again (after a recovery).
The guards say *why* a provider failed, and who actually served each request. One tracker per
call turns both into :class:`SwitchEvent`\\ s for the health log, the metrics, the journal, the
load report and ``simulate``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plugins.catalog import CATALOG
from plugins.resilience.types import Admission, BreakerState, Failure

_GUARDED_LABEL = re.compile(r"guarded\[(stt|llm|tts):([\w-]+)\]")
SLOTS = ("stt", "llm", "tts")


@dataclass(frozen=True)
class SwitchEvent:
    at_s: float  # seconds since the tracker started (the call's start)
    slot: str
    from_provider: str | None
    to_provider: str
    reason: str  # why the previous provider was left, e.g. "402 quota exhausted"

    @property
    def is_recovery(self) -> bool:
        return self.reason == "recovered"

    @property
    def is_fallback(self) -> bool:
        return not self.is_recovery


SwitchListener = Callable[[SwitchEvent], None]


def _class_label(instance: object) -> str:
    """How LiveKit labels a plugin's metrics: its module and class name."""
    return f"{type(instance).__module__}.{type(instance).__name__}"


def _is_adapter(label: str) -> bool:
    """Chain wrappers (fallback, replay, stream adapters) report metrics of what they wrap."""
    return label.rpartition(".")[2].endswith("Adapter")


def provider_of(slot: str, instance: object) -> str:
    """The provider name behind a chain member (guards carry their key in their label)."""
    while hasattr(instance, "wrapped_stt"):  # a non-streaming STT behind LiveKit's StreamAdapter
        instance = instance.wrapped_stt
    label = str(getattr(instance, "label", ""))
    match = _GUARDED_LABEL.search(label)
    if match:
        return match.group(2)
    return CATALOG.floor(slot)  # type: ignore[arg-type]


class SwitchTracker:
    """Follows one call's chains (``plugins.chain.Chains``); also a guard observer.

    It registers itself with the chains' adapters and guards on construction; ``close()``
    unregisters it.
    """

    def __init__(self, chains: Any, *, started_at: float | None = None) -> None:
        self._chains = chains
        self._started_at = time.time() if started_at is None else started_at
        self.order: dict[str, list[str]] = {
            slot: [k.partition(":")[2] for k in keys] for slot, keys in chains.order.items()
        }
        self._available: dict[str, dict[str, bool]] = {
            slot: dict.fromkeys(names, True) for slot, names in self.order.items()
        }
        self._reason: dict[str, str] = {}
        self._probing: set[str] = set()
        self._listeners: list[SwitchListener] = []
        self.switches: list[SwitchEvent] = []
        self.served: list[tuple[float, str, str]] = []  # (wall time, slot, provider)
        self._handlers: list[tuple[Any, str, Callable[..., None]]] = []
        for slot, adapter in (("stt", chains.stt), ("llm", chains.llm), ("tts", chains.tts)):
            self._listen(adapter, f"{slot}_availability_changed", self._availability(slot))
            self._listen(adapter, "metrics_collected", self._metrics(slot))
        for guarded in chains.guards.values():
            guarded.guard.observers.append(self)

    def subscribe(self, listener: SwitchListener) -> None:
        self._listeners.append(listener)

    def _listen(self, emitter: Any, event: str, handler: Callable[..., None]) -> None:
        emitter.on(event, handler)
        self._handlers.append((emitter, event, handler))

    def close(self) -> None:
        for emitter, event, handler in self._handlers:
            with contextlib.suppress(Exception):
                emitter.off(event, handler)
        self._handlers.clear()
        for guarded in self._chains.guards.values():
            with contextlib.suppress(ValueError):
                guarded.guard.observers.remove(self)

    def current(self, slot: str) -> str | None:
        for name in self.order.get(slot, []):
            if self._available[slot].get(name, True):
                return name
        names = self.order.get(slot, [])
        return names[-1] if names else None

    def served_between(self, start: float, end: float) -> dict[str, str]:
        """slot -> the last provider that served a request in [start, end] (wall time)."""
        result: dict[str, str] = {}
        for at, slot, name in self.served:
            if start <= at <= end:
                result[slot] = name
        return result

    def _availability(self, slot: str) -> Callable[[Any], None]:
        def handler(ev: Any) -> None:
            name = provider_of(slot, getattr(ev, slot, None))
            before = self.current(slot)
            self._available[slot][name] = bool(ev.available)
            after = self.current(slot)
            if after is None or after == before:
                return
            order = self.order[slot]
            went_up = before in order and order.index(after) < order.index(before)
            reason = "recovered" if went_up else self._reason.get(f"{slot}:{before}", "failed")
            event = SwitchEvent(
                round(time.time() - self._started_at, 2), slot, before, after, reason
            )
            self.switches.append(event)
            for listener in self._listeners:
                listener(event)

        return handler

    def _metrics(self, slot: str) -> Callable[..., None]:
        # The guards say which guarded provider served; the floor is not guarded, so its
        # metrics (a local plugin class no guard wraps) are how we see it serve.
        guarded: set[str] = set()
        for g in self._chains.guards.values():
            guarded |= {_class_label(g), _class_label(g.inner), str(g.label), str(g.inner.label)}

        def handler(metrics: Any, *_: Any) -> None:
            label = str(getattr(metrics, "label", ""))
            if label and label not in guarded and not _is_adapter(label):
                self.served.append((time.time(), slot, CATALOG.floor(slot)))  # type: ignore[arg-type]

        return handler

    # GuardObserver -----------------------------------------------------------------------
    def on_attempt(self, key: str, *, is_probe: bool) -> None:
        if is_probe:
            self._probing.add(key)

    def on_success(self, key: str, *, latency_s: float | None) -> None:
        if key in self._probing:  # a synthetic probe served no caller
            self._probing.discard(key)
            return
        slot, _, name = key.partition(":")
        self.served.append((time.time(), slot, name))

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        self._probing.discard(key)
        status = f"{failure.status} " if failure.status else ""
        self._reason[key] = f"{status}{failure.kind.value.replace('_', ' ')}"

    def on_skip(self, key: str, admission: Admission) -> None:
        self._reason.setdefault(key, admission.reason or admission.state.value)

    def on_usage(self, key: str, unit: str, amount: float) -> None:
        return None
