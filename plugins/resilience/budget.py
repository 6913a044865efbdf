"""Spending caps per provider: warn at 80 %, skip the provider once its budget is spent.

A budget is a store decorator rather than a guard feature: every guard already meters usage
through ``store.add_usage``, which returns the period's running total (shared by every call on
the machine or in the pool). When that total, priced, reaches the budget, the provider's breaker
is opened with ``BUDGET_EXHAUSTED`` until the period ends, so every guard skips it without a
request until the next month (or day) starts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from plugins.resilience.breaker import Period, period_end
from plugins.resilience.headroom import Headroom
from plugins.resilience.store import period_id
from plugins.resilience.types import (
    Admission,
    BreakerState,
    Failure,
    FailureKind,
    HealthStore,
    ProviderHealth,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Budget:
    unit: str  # the unit the provider is metered in (characters, audio_seconds, tokens)
    usd_per_unit: float
    limit_usd: float
    warn_fraction: float = 0.8


class BudgetedStore:
    """A :class:`~plugins.resilience.types.HealthStore` that enforces spending caps."""

    def __init__(
        self,
        inner: HealthStore,
        budgets: Mapping[str, Budget],
        *,
        period: Period = "month",
    ) -> None:
        self._inner = inner
        self._budgets = dict(budgets)
        self._period = period
        self._warned: set[tuple[str, str]] = set()

    async def add_usage(
        self, key: str, unit: str, amount: float, *, now: float | None = None
    ) -> float:
        total = await self._inner.add_usage(key, unit, amount, now=now)
        budget = self._budgets.get(key)
        if budget is None or budget.unit != unit or budget.limit_usd <= 0:
            return total
        at = time.time() if now is None else now
        spent = total * budget.usd_per_unit
        period = period_id(self._period, at)
        if spent >= budget.limit_usd:
            await self._inner.record_failure(
                key,
                Failure(
                    FailureKind.BUDGET_EXHAUSTED,
                    f"budget of ${budget.limit_usd:.2f} for {period} spent (${spent:.2f})",
                    reset_at=period_end(self._period, at),
                ),
                now=now,
            )
            if (key, f"spent:{period}") not in self._warned:
                self._warned.add((key, f"spent:{period}"))
                log.warning(
                    "provider budget spent; skipping it until the period ends",
                    provider=key,
                    budget_usd=budget.limit_usd,
                    spent_usd=round(spent, 4),
                    period=period,
                )
        elif (
            spent >= budget.limit_usd * budget.warn_fraction
            and (key, f"warn:{period}") not in self._warned
        ):
            self._warned.add((key, f"warn:{period}"))
            log.warning(
                f"provider budget {budget.warn_fraction:.0%} used",
                provider=key,
                budget_usd=budget.limit_usd,
                spent_usd=round(spent, 4),
                period=period,
            )
        return total

    # -- plain delegation ------------------------------------------------------------------
    async def admit(self, key: str, *, now: float | None = None) -> Admission:
        return await self._inner.admit(key, now=now)

    async def record_success(
        self, key: str, *, latency_s: float | None, now: float | None = None
    ) -> None:
        await self._inner.record_success(key, latency_s=latency_s, now=now)

    async def record_failure(
        self, key: str, failure: Failure, *, now: float | None = None
    ) -> BreakerState:
        return await self._inner.record_failure(key, failure, now=now)

    async def health(self, key: str) -> ProviderHealth:
        return await self._inner.health(key)

    async def all_health(self) -> list[ProviderHealth]:
        return await self._inner.all_health()

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
        await self._inner.record_credit(
            key, remaining=remaining, limit=limit, unit=unit, reset_at=reset_at, now=now
        )

    async def record_headroom(self, key: str, readings: list[Headroom]) -> None:
        await self._inner.record_headroom(key, readings)

    async def headroom(self, key: str) -> list[Headroom]:
        return await self._inner.headroom(key)

    async def set_override(self, key: str, state: BreakerState | None) -> None:
        await self._inner.set_override(key, state)

    async def register(self, key: str, fingerprint: str) -> BreakerState:
        return await self._inner.register(key, fingerprint)

    async def aclose(self) -> None:
        await self._inner.aclose()
