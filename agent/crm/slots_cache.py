"""Free slots per calendar, kept 30-60 s so scheduling talk does not wait on GHL every turn."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


@dataclass
class _Entry:
    start: datetime
    end: datetime
    slots: list[datetime]
    fetched_at: float


class FreeSlotsCache:
    def __init__(self, ttl_s: float = 45.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, list[_Entry]] = {}

    def get(self, calendar_id: str, start: datetime, end: datetime) -> list[datetime] | None:
        """Slots in ``[start, end]`` from a fresh entry that covers the whole range, else None."""
        now = self._clock()
        fresh = [e for e in self._entries.get(calendar_id, []) if now - e.fetched_at < self.ttl_s]
        self._entries[calendar_id] = fresh
        for e in fresh:
            if e.start <= start and end <= e.end:
                return [s for s in e.slots if start <= s <= end]
        return None

    def put(self, calendar_id: str, start: datetime, end: datetime, slots: list[datetime]) -> None:
        self._entries.setdefault(calendar_id, []).append(
            _Entry(start, end, sorted(slots), self._clock())
        )

    def invalidate(self, calendar_id: str) -> None:
        self._entries.pop(calendar_id, None)
