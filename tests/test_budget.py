"""Budgets: a provider whose period spend reaches its cap is skipped by every call until the
period ends, after a warning at 80 %."""

from __future__ import annotations

import calendar
from pathlib import Path

from structlog.testing import capture_logs

from plugins.resilience.budget import Budget, BudgetedStore
from plugins.resilience.store import open_store
from plugins.resilience.types import BreakerState, FailureKind

NOW = calendar.timegm((2026, 11, 25, 12, 0, 0))
DEC_1 = calendar.timegm((2026, 12, 1, 0, 0, 0))


async def test_budget_warns_then_skips_until_month_end(tmp_path: Path) -> None:
    inner = open_store(None, tmp_path, clock=lambda: NOW)
    store = BudgetedStore(inner, {"tts:cartesia": Budget("characters", 0.001, limit_usd=1.0)})
    with capture_logs() as logs:
        await store.add_usage("tts:cartesia", "characters", 500, now=NOW)
        assert not [e for e in logs if "budget" in e["event"]]
        await store.add_usage("tts:cartesia", "characters", 300, now=NOW)  # $0.80
        assert (await store.admit("tts:cartesia", now=NOW)).allowed
        await store.add_usage("tts:cartesia", "characters", 250, now=NOW)  # $1.05
    assert [e["event"] for e in logs] == [
        "provider budget 80% used",
        "provider budget spent; skipping it until the period ends",
    ]
    refused = await store.admit("tts:cartesia", now=NOW + 3600)
    assert not refused.allowed and refused.state is BreakerState.OPEN
    assert refused.until == DEC_1
    health = await store.health("tts:cartesia")
    assert health.last_failure is FailureKind.BUDGET_EXHAUSTED
    # A second "call" on the same machine (a new store object on the same file) skips it too.
    other = open_store(None, tmp_path, clock=lambda: NOW)
    assert not (await other.admit("tts:cartesia", now=NOW + 7200)).allowed
    assert (await other.admit("tts:cartesia", now=DEC_1 + 1)).allowed
    await other.aclose()
    await store.aclose()


async def test_usage_in_another_unit_or_without_budget_is_not_capped(tmp_path: Path) -> None:
    store = BudgetedStore(
        open_store(None, tmp_path), {"tts:cartesia": Budget("characters", 1.0, limit_usd=1.0)}
    )
    await store.add_usage("tts:elevenlabs", "characters", 10_000)
    await store.add_usage("tts:cartesia", "audio_seconds", 10_000)
    assert (await store.admit("tts:elevenlabs")).allowed
    assert (await store.admit("tts:cartesia")).allowed
    await store.aclose()
