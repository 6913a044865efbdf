"""The process's own health store: the same documents and rules, kept in this process's memory.

What a process falls back on while the shared store (SQLite file or Redis) is unreachable,
hung or broken (see :mod:`plugins.resilience.store_failopen`): the breaker rules are exactly
the shared store's, so a provider that fails here is skipped here, and a healthy one keeps
answering. Nothing is shared with other processes; every operation is atomic because it
never awaits between its read and its write.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from plugins.resilience.breaker import Jitter
from plugins.resilience.store import (
    Clock,
    DocumentStore,
    Parts,
    ProviderDoc,
    StoreConfig,
    apply_change,
)

T = TypeVar("T")


class MemoryHealthStore(DocumentStore):
    """:class:`~plugins.resilience.types.HealthStore` in a dict (one process, no I/O)."""

    def __init__(
        self,
        config: StoreConfig | None = None,
        *,
        clock: Clock = time.time,
        jitter: Jitter | None = None,
    ) -> None:
        super().__init__(config, clock=clock, jitter=jitter)
        self._docs: dict[str, Parts] = {}
        self._usage_by_key: defaultdict[str, dict[str, float]] = defaultdict(dict)

    async def _read_breaker(self, key: str) -> str:
        return self._docs.get(key, ("", ""))[0]

    async def _read(self, key: str) -> Parts:
        return self._docs.get(key, ("", ""))

    async def _update(self, key: str, change: Callable[[ProviderDoc], T]) -> T:
        result, write = apply_change(self._docs.get(key, ("", "")), change, key=key)
        if write is not None:
            self._docs[key] = write
        return result

    async def _add_usage(self, key: str, field_name: str, amount: float) -> float:
        usage = self._usage_by_key[key]
        usage[field_name] = usage.get(field_name, 0.0) + amount
        return usage[field_name]

    async def _usage(self, key: str) -> dict[str, float]:
        return dict(self._usage_by_key.get(key, {}))

    async def _keys(self) -> list[str]:
        return sorted(set(self._docs) | set(self._usage_by_key))

    async def _ping(self, now: float) -> None:
        return None

    async def aclose(self) -> None:
        return None
