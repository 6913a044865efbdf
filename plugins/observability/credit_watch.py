"""Reads each provider's remaining credit in the background, once per machine.

Where a provider's account API says how much credit is left (ElevenLabs' subscription,
OpenRouter's key info), the watcher stores it beside the provider's health so ``status`` and
the health log show it, warns when it runs low, and when it is gone opens the provider's
breaker with ``QUOTA_EXHAUSTED`` *until the reset time the provider reported*: a 402 alone only
says "no credit", the account API says until when. Failed reads back off exponentially (with
jitter) so a provider's outage never turns into a flood of account calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence

import aiohttp
import structlog

from plugins.observability.account import CreditReport
from plugins.observability.credit import can_check, check_credit
from plugins.resilience.types import Failure, FailureKind, HealthStore
from plugins.spec import ProviderSpec

log = structlog.get_logger(__name__)


class CreditWatcher:
    def __init__(
        self,
        specs: Sequence[ProviderSpec],
        store: HealthStore,
        *,
        interval_s: float = 300.0,
        max_backoff_s: float = 3600.0,
        low_fraction: float = 0.1,
    ) -> None:
        self._specs = [s for s in specs if can_check(s)]
        self._store = store
        self._interval_s = interval_s
        self._max_backoff_s = max_backoff_s
        self._low_fraction = low_fraction
        self._failures: dict[str, int] = {}
        self._warned_low: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def watched(self) -> list[str]:
        return [s.key for s in self._specs]

    def start(self) -> None:
        if self._specs and self._task is None:
            self._task = asyncio.create_task(self._run(), name="credit-watcher")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as http:
            next_due = dict.fromkeys(self.watched, 0.0)
            loop = asyncio.get_running_loop()
            while True:
                now = loop.time()
                for spec in self._specs:
                    if next_due[spec.key] <= now:
                        delay = await self.check_once(spec, http)
                        next_due[spec.key] = loop.time() + delay
                await asyncio.sleep(max(0.05, min(next_due.values()) - loop.time()))

    async def check_once(self, spec: ProviderSpec, http: aiohttp.ClientSession) -> float:
        """Read one provider's credit, act on it; returns seconds until the next read."""
        report = await check_credit(spec, http)
        if report is None or report.key_ok is None:
            failures = self._failures.get(spec.key, 0) + 1
            self._failures[spec.key] = failures
            backoff = min(self._max_backoff_s, self._interval_s * 2 ** min(failures, 10))
            log.info(
                "credit read failed; backing off",
                provider=spec.key,
                problem=report.problem if report else None,
                retry_in_s=round(backoff),
            )
            return random.uniform(backoff / 2, backoff)
        self._failures.pop(spec.key, None)
        await self._apply(report)
        return self._interval_s

    async def _apply(self, report: CreditReport) -> None:
        if report.remaining is None:
            return
        await self._store.record_credit(
            report.key,
            remaining=report.remaining,
            limit=report.limit,
            unit=report.unit,
            reset_at=report.reset_at,
        )
        if report.exhausted:
            await self._store.record_failure(
                report.key,
                Failure(
                    FailureKind.QUOTA_EXHAUSTED,
                    report.problem or "credit used up",
                    reset_at=report.reset_at,
                ),
            )
            log.warning(
                "provider credit used up; skipping it until it resets",
                provider=report.key,
                reset_at=report.reset_at,
            )
        elif (
            report.limit
            and report.remaining < report.limit * self._low_fraction
            and report.key not in self._warned_low
        ):
            self._warned_low.add(report.key)
            log.warning(
                "provider credit running low",
                provider=report.key,
                remaining=report.remaining,
                limit=report.limit,
                unit=report.unit,
            )
