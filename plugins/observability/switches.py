"""Which provider a call is on in each slot, when that changes, and why.

The chain cursor of each fallback adapter (:mod:`plugins.fallback.cursor`) publishes typed
events carrying the member's key: a :class:`~plugins.fallback.cursor.ChainSwitch` when the
member that serves the slot's next request changes (with the reason it left the previous
one), a :class:`~plugins.fallback.cursor.ChainServed` when a member served a request. One
tracker per call turns them into :class:`SwitchEvent`\\ s (seconds since the call started,
provider names) for the health log, the metrics, the journal, the load report and
``simulate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from plugins.fallback.cursor import ChainCursor, ChainObserver, ChainServed, ChainSwitch
from plugins.spec import Slot

SLOTS: tuple[Slot, ...] = ("stt", "llm", "tts")


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


class _Adapter(Protocol):
    @property
    def chain(self) -> ChainCursor[Any]: ...


class ChainSet(Protocol):
    """What the tracker follows: ``plugins.chain.Chains`` (or a call runtime holding one)."""

    @property
    def stt(self) -> _Adapter: ...

    @property
    def llm(self) -> _Adapter: ...

    @property
    def tts(self) -> _Adapter: ...


def _name(key: str) -> str:
    """``tts:cartesia`` -> ``cartesia``."""
    return key.partition(":")[2] or key


class SwitchTracker(ChainObserver):
    """Follows one call's three chains; ``close()`` stops following them."""

    def __init__(self, chains: ChainSet, *, started_at: float | None = None) -> None:
        self._started_at = time.time() if started_at is None else started_at
        self._cursors: dict[str, ChainCursor[Any]] = {
            "stt": chains.stt.chain,
            "llm": chains.llm.chain,
            "tts": chains.tts.chain,
        }
        self.order: dict[str, list[str]] = {
            slot: [_name(k) for k in cursor.keys] for slot, cursor in self._cursors.items()
        }
        self._listeners: list[SwitchListener] = []
        self.switches: list[SwitchEvent] = []
        self.served: list[tuple[float, str, str]] = []  # (wall time, slot, provider)
        for cursor in self._cursors.values():
            cursor.subscribe(self)

    def subscribe(self, listener: SwitchListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: SwitchListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def close(self) -> None:
        for cursor in self._cursors.values():
            cursor.unsubscribe(self)

    def current(self, slot: str) -> str | None:
        """The provider the slot's next request goes to first."""
        cursor = self._cursors.get(slot)
        return _name(cursor.serving_key()) if cursor is not None else None

    def served_between(self, start: float, end: float) -> dict[str, str]:
        """slot -> the last provider that served a request in [start, end] (wall time)."""
        result: dict[str, str] = {}
        for at, slot, name in self.served:
            if start <= at <= end:
                result[slot] = name
        return result

    # ChainObserver ------------------------------------------------------------------------
    def on_switch(self, event: ChainSwitch) -> None:
        switch = SwitchEvent(
            round(event.at - self._started_at, 2),
            event.slot,
            _name(event.from_key) if event.from_key is not None else None,
            _name(event.to_key),
            event.reason,
        )
        self.switches.append(switch)
        for listener in list(self._listeners):
            listener(switch)

    def on_served(self, event: ChainServed) -> None:
        self.served.append((event.at, event.slot, _name(event.key)))
