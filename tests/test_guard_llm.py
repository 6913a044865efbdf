"""GuardedLLM with the real OpenAI plugin against the OpenAI simulator and the real store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from livekit.agents import llm
from livekit.plugins import openai

from plugins.chain import Chains, build_chains
from plugins.local.scripted_llm import ScriptedLLM
from plugins.resilience.deadlines import AdaptiveDeadline, DeadlineSettings
from plugins.resilience.failures import ClassifiedError
from plugins.resilience.guard import Guard
from plugins.resilience.guard_llm import GuardedLLM
from plugins.resilience.store import DocumentStore
from plugins.resilience.types import BreakerState, FailureKind
from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import REJECTED_KEY, OpenAISimulator
from plugins.spec import ProviderSpec
from tests.guard_fixtures import FakeClock, RecordingObserver, ServedBy, ask, clock, store

__all__ = ["clock", "store"]

KEY = "llm:openai"
FAST = {"llm": DeadlineSettings(floor_s=0.3, ceiling_s=0.6, stall_s=0.6)}
QUESTION = "Hi, what do you sell?"


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator() as s:
        yield s


def _chains(
    sim: OpenAISimulator,
    store: DocumentStore,
    clock: FakeClock,
    observer: RecordingObserver,
    *,
    key: str = "sim-key",
) -> Chains:
    spec = ProviderSpec("llm", "openai", base_url=sim.base_url, api_key=key, model="gpt-4o-mini")
    return build_chains(
        [spec], store, observers=[observer], deadlines=FAST, clock=clock, probes=False
    )


async def _settle(chains: Chains) -> None:
    for guarded in chains.guards.values():
        await guarded.guard.drain()


async def _chunks(model: llm.LLM[object], text: str) -> list[str]:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=text)
    out = []
    async with model.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                out.append(chunk.delta.content)
    return out


async def test_happy_path_passes_chunks_through_unchanged(
    sim: OpenAISimulator, store: DocumentStore
) -> None:
    observer = RecordingObserver()
    guard = Guard(KEY, store, deadline=AdaptiveDeadline(FAST["llm"]), observers=[observer])
    guarded = GuardedLLM(openai.LLM(api_key="sim-key", base_url=sim.base_url), guard)
    plain = openai.LLM(api_key="sim-key", base_url=sim.base_url)
    expected = await _chunks(plain, QUESTION)
    got = await _chunks(guarded, QUESTION)
    assert got == expected and "".join(got)
    # a local model, chunk for chunk
    local_guard = Guard("llm:scripted", store, deadline=AdaptiveDeadline(FAST["llm"]))
    assert await _chunks(GuardedLLM(ScriptedLLM(), local_guard), QUESTION) == await _chunks(
        ScriptedLLM(), QUESTION
    )
    await guard.drain()
    await local_guard.drain()
    health = await store.health(KEY)
    assert health.state is BreakerState.CLOSED and health.requests == 1
    assert health.usage.get("tokens", 0) > 0
    assert observer.successes[0][1] is not None  # time to first token measured
    await guarded.aclose()


async def test_silent_primary_fails_over_within_the_deadline(
    sim: OpenAISimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.always(Fault(FaultType.HANG))
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    served = ServedBy(chains.llm)
    answer = await ask(chains.llm, QUESTION)
    await _settle(chains)
    assert answer
    assert observer.kinds(KEY)[0] == "timeout"
    assert "ScriptedLLM" in served.last() or "scripted" in served.last().lower()
    await chains.aclose()


async def test_open_breaker_sends_no_request_from_a_second_call(
    sim: OpenAISimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.always(Fault(FaultType.STATUS, status=500))
    observer = RecordingObserver()
    first = _chains(sim, store, clock, observer)
    assert await ask(first.llm, QUESTION)
    await _settle(first)
    assert observer.kinds(KEY)[0] == "server_error"
    seen = sim.state.log.count()
    second = _chains(sim, store, clock, observer)
    assert await ask(second.llm, QUESTION)
    assert sim.state.log.count() == seen
    await first.aclose()
    await second.aclose()


async def test_quota_gets_a_long_cooldown(
    sim: OpenAISimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.once(Fault(FaultType.QUOTA))
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    assert await ask(chains.llm, QUESTION)
    await _settle(chains)
    assert observer.kinds(KEY)[0] == "quota_exhausted"
    health = await store.health(KEY)
    assert health.open_until is not None and health.open_until - clock() >= 3000
    await chains.aclose()


async def test_request_fault_does_not_trip_the_breaker(
    sim: OpenAISimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.once(
        Fault(
            FaultType.STATUS,
            status=400,
            message="This model's maximum context length is 128000 tokens.",
        )
    )
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    await ask(chains.llm, QUESTION)
    await _settle(chains)
    assert observer.kinds(KEY)[0] == "request_fault"
    assert (await store.health(KEY)).state is BreakerState.CLOSED  # trips after 1 otherwise
    await chains.aclose()


async def test_rejected_key_stays_off(
    sim: OpenAISimulator, store: DocumentStore, clock: FakeClock
) -> None:
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer, key=REJECTED_KEY)
    assert await ask(chains.llm, QUESTION)
    await _settle(chains)
    assert observer.kinds(KEY)[0] == "key_rejected"
    seen = sim.state.log.count()
    clock.advance(7 * 24 * 3600)
    again = _chains(sim, store, clock, observer, key=REJECTED_KEY)
    assert await ask(again.llm, QUESTION)
    assert sim.state.log.count() == seen
    assert (await store.health(KEY)).state is BreakerState.KEY_REJECTED
    await chains.aclose()
    await again.aclose()


async def test_stall_mid_answer_is_classified(sim: OpenAISimulator, store: DocumentStore) -> None:
    sim.state.plan.once(Fault(FaultType.STALL, after_chunks=2))
    observer = RecordingObserver()
    guard = Guard(KEY, store, deadline=AdaptiveDeadline(FAST["llm"]), observers=[observer])
    guarded = GuardedLLM(openai.LLM(api_key="sim-key", base_url=sim.base_url), guard)
    with pytest.raises(ClassifiedError):
        await ask(guarded, QUESTION)
    await guard.drain()
    assert observer.kinds(KEY) == ["stall"]
    assert (await store.health(KEY)).last_failure is FailureKind.STALL
    await guarded.aclose()


async def test_probe_is_one_token_and_closes_the_breaker(
    sim: OpenAISimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.once(Fault(FaultType.STATUS, status=503))
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    await ask(chains.llm, QUESTION)
    await _settle(chains)
    health = await store.health(KEY)
    assert health.state is BreakerState.OPEN and health.open_until is not None
    clock.now = health.open_until + 0.1
    seen = sim.state.log.count()
    assert await chains.probers[KEY].try_probe() is True
    assert sim.state.log.count() == seen + 1
    assert observer.attempts[-1] == (KEY, True)
    await chains.aclose()
