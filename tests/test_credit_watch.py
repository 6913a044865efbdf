"""The background credit reader: remaining credit reaches the store (and ``status``), an
exhausted account opens the breaker until the reset time the provider reported, failed reads
back off."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from plugins.observability.credit_watch import CreditWatcher
from plugins.resilience.store import open_store
from plugins.resilience.types import BreakerState, Failure, FailureKind
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec


async def test_exhausted_credit_opens_until_the_reported_reset(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    async with ElevenLabsSimulator(character_limit=5000) as sim:
        sim.characters_used = 5000
        spec = ProviderSpec("tts", "elevenlabs", base_url=sim.base_url, api_key="sim-key")
        # A 402 seen mid-call says "no credit" but not until when: a default cooldown.
        await store.record_failure(
            spec.key, Failure(FailureKind.QUOTA_EXHAUSTED, "quota_exceeded", status=401)
        )
        before = await store.health(spec.key)
        watcher = CreditWatcher([spec], store, interval_s=300)
        async with aiohttp.ClientSession() as http:
            next_in = await watcher.check_once(spec, http)
    assert next_in == 300
    health = await store.health(spec.key)
    assert health.credit is not None
    assert health.credit["remaining"] == 0 and health.credit["limit"] == 5000
    assert health.credit["unit"] == "characters"
    assert health.state is BreakerState.OPEN
    assert health.open_until == sim.next_reset_unix  # the provider's own reset time
    assert before.open_until != sim.next_reset_unix
    await store.aclose()


async def test_remaining_credit_is_stored_and_failed_reads_back_off(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    async with OpenAISimulator(flavor="openrouter") as sim:
        sim.credit_usd = (9.5, 10.0)
        good = ProviderSpec("llm", "openrouter", base_url=sim.base_url, api_key="sim-key")
        dead = ProviderSpec("llm", "openai", base_url="http://127.0.0.1:9/v1", api_key="k")
        watcher = CreditWatcher([good, dead], store, interval_s=60)
        assert watcher.watched == ["llm:openrouter", "llm:openai"]
        async with aiohttp.ClientSession() as http:
            assert await watcher.check_once(good, http) == 60
            delays = [await watcher.check_once(dead, http) for _ in range(3)]
    health = await store.health("llm:openrouter")
    assert health.credit is not None and health.credit["remaining"] == 0.5
    assert health.state is BreakerState.CLOSED  # low, not gone
    # exponential backoff with jitter: each window doubles (60*2, *4, *8), jitter in [1/2, 1]
    for attempt, delay in enumerate(delays, start=1):
        window = 60 * 2**attempt
        assert window / 2 <= delay <= window
    await store.aclose()
