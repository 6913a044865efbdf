"""One immediate retry on the same provider after a fast, transient failure, then fallback.

Real LiveKit plugins against the simulators, a real store whose breaker trips after three
failures (so one failure leaves it closed and the retry rule, not the breaker, decides).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError, utils
from livekit.plugins import cartesia, openai

from plugins.chain import Chains, build_chains
from plugins.resilience.deadlines import AdaptiveDeadline, DeadlineSettings
from plugins.resilience.failures import ClassifiedError
from plugins.resilience.guard import Guard, fast_transient
from plugins.resilience.guard_llm import GuardedLLM
from plugins.resilience.guard_stt import GuardedSTT
from plugins.resilience.guard_tts import GuardedTTS
from plugins.resilience.store import DocumentStore
from plugins.resilience.types import BreakerState, Failure, FailureKind
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec
from tests.guard_fixtures import FakeClock, RecordingObserver, ask, clock, make_store, synthesize

__all__ = ["clock"]

# roomy deadlines: a fault answered by a loaded machine still arrives within half of them
ROOMY = DeadlineSettings(floor_s=3.0, ceiling_s=6.0, stall_s=3.0)
TIGHT = DeadlineSettings(floor_s=0.3, ceiling_s=0.6, stall_s=0.6)
QUESTION = "Hi, what do you sell?"
TEXT = "Thanks for calling, how can I help?"


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[DocumentStore]:
    s = make_store(tmp_path, clock, trip_after=3)
    yield s
    await s.aclose()


@pytest.fixture
async def llm_sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator() as s:
        yield s


@pytest.fixture
async def tts_sim() -> AsyncIterator[CartesiaSimulator]:
    async with utils.http_context.open(), CartesiaSimulator() as s:
        yield s


def _llm(
    sim: OpenAISimulator, store: DocumentStore, observer: RecordingObserver, d: DeadlineSettings
) -> GuardedLLM:
    guard = Guard("llm:openai", store, deadline=AdaptiveDeadline(d), observers=[observer])
    return GuardedLLM(openai.LLM(api_key="sim-key", base_url=sim.base_url), guard)


def _llm_chain(sim: OpenAISimulator, store: DocumentStore, clock: FakeClock) -> Chains:
    spec = ProviderSpec("llm", "openai", base_url=sim.base_url, api_key="sim-key")
    return build_chains([spec], store, deadlines={"llm": ROOMY}, clock=clock, probes=False)


# -- the rule ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "status", "retried"),
    [
        (FailureKind.CONNECTION_ERROR, None, True),
        (FailureKind.SERVER_ERROR, 502, True),
        (FailureKind.SERVER_ERROR, 503, True),
        (FailureKind.SERVER_ERROR, 504, True),
        (FailureKind.SERVER_ERROR, 500, False),
        (FailureKind.RATE_LIMITED, 429, False),
        (FailureKind.QUOTA_EXHAUSTED, 402, False),
        (FailureKind.KEY_REJECTED, 401, False),
        (FailureKind.REQUEST_FAULT, 400, False),
        (FailureKind.TIMEOUT, None, False),
    ],
)
def test_only_fast_transient_failures_are_retried(
    kind: FailureKind, status: int | None, retried: bool
) -> None:
    assert fast_transient(Failure(kind, "x", status=status)) is retried


# -- LLM -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault", [Fault(FaultType.STATUS, status=503), Fault(FaultType.RESET)], ids=["503", "reset"]
)
async def test_llm_one_fast_failure_is_retried_on_the_same_provider(
    llm_sim: OpenAISimulator, store: DocumentStore, fault: Fault
) -> None:
    plain = await ask(openai.LLM(api_key="sim-key", base_url=llm_sim.base_url), QUESTION)
    llm_sim.state.log.clear()
    llm_sim.state.plan.once(fault)
    observer = RecordingObserver()
    guarded = _llm(llm_sim, store, observer, ROOMY)
    assert await ask(guarded, QUESTION) == plain  # the primary's own answer
    await guarded.guard.drain()
    assert llm_sim.state.log.count() == 2
    assert len(observer.failures) == 1  # the first failure still counts toward the breaker
    health = await store.health("llm:openai")
    assert health.state is BreakerState.CLOSED and health.last_failure is not None
    await guarded.aclose()


async def test_llm_two_503s_fall_back_after_exactly_two_attempts(
    llm_sim: OpenAISimulator, store: DocumentStore, clock: FakeClock
) -> None:
    llm_sim.state.plan.once(Fault(FaultType.STATUS, status=503), times=2)
    chains = _llm_chain(llm_sim, store, clock)
    assert await ask(chains.llm, QUESTION)  # the local floor answered
    for guarded in chains.guards.values():
        await guarded.guard.drain()
    assert llm_sim.state.log.count() == 2
    await chains.aclose()


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultType.STATUS, status=429, retry_after_s=1.0),
        Fault(FaultType.QUOTA),
        Fault(FaultType.STATUS, status=500),
    ],
    ids=["429", "quota", "500"],
)
async def test_llm_refusals_are_not_retried(
    llm_sim: OpenAISimulator, store: DocumentStore, fault: Fault
) -> None:
    llm_sim.state.plan.once(fault)
    guarded = _llm(llm_sim, store, RecordingObserver(), ROOMY)
    with pytest.raises(ClassifiedError):
        await ask(guarded, QUESTION)
    assert llm_sim.state.log.count() == 1
    await guarded.aclose()


async def test_llm_timeout_is_not_retried(llm_sim: OpenAISimulator, store: DocumentStore) -> None:
    llm_sim.state.plan.once(Fault(FaultType.HANG))
    guarded = _llm(llm_sim, store, RecordingObserver(), TIGHT)
    with pytest.raises(ClassifiedError) as info:
        await ask(guarded, QUESTION)
    assert info.value.failure.kind is FailureKind.TIMEOUT
    assert llm_sim.state.log.count() == 1
    await guarded.aclose()


async def test_llm_failure_after_the_first_chunk_is_not_retried(
    llm_sim: OpenAISimulator, store: DocumentStore
) -> None:
    llm_sim.state.plan.once(Fault(FaultType.CUT, after_chunks=2))
    guarded = _llm(llm_sim, store, RecordingObserver(), ROOMY)
    with pytest.raises(ClassifiedError):
        await ask(guarded, QUESTION)
    assert llm_sim.state.log.count() == 1
    await guarded.aclose()


async def test_llm_no_retry_once_the_breaker_opened(
    llm_sim: OpenAISimulator, tmp_path: Path, clock: FakeClock
) -> None:
    tripping = make_store(tmp_path, clock, trip_after=1)
    llm_sim.state.plan.once(Fault(FaultType.STATUS, status=503))
    guarded = _llm(llm_sim, tripping, RecordingObserver(), ROOMY)
    with pytest.raises(ClassifiedError):
        await ask(guarded, QUESTION)
    assert llm_sim.state.log.count() == 1
    await guarded.aclose()
    await tripping.aclose()


# -- TTS -----------------------------------------------------------------------------------
def _tts(sim: CartesiaSimulator, store: DocumentStore, observer: RecordingObserver) -> GuardedTTS:
    guard = Guard("tts:cartesia", store, deadline=AdaptiveDeadline(ROOMY), observers=[observer])
    return GuardedTTS(cartesia.TTS(api_key="sim-key", base_url=sim.base_url), guard)


@pytest.mark.parametrize(
    "fault", [Fault(FaultType.STATUS, status=503), Fault(FaultType.RESET)], ids=["503", "reset"]
)
async def test_tts_one_fast_failure_is_retried_on_the_same_voice(
    tts_sim: CartesiaSimulator, store: DocumentStore, fault: Fault
) -> None:
    tts_sim.state.plan.once(fault)
    observer = RecordingObserver()
    guarded = _tts(tts_sim, store, observer)
    audio = await synthesize(guarded, TEXT)
    await guarded.guard.drain()
    assert len(audio) > 16000  # the caller heard the primary's voice
    assert tts_sim.state.log.count() == 2
    assert len(observer.failures) == 1
    await guarded.aclose()


async def test_tts_two_failures_give_up_after_two_attempts(
    tts_sim: CartesiaSimulator, store: DocumentStore
) -> None:
    tts_sim.state.plan.once(Fault(FaultType.STATUS, status=503), times=2)
    guarded = _tts(tts_sim, store, RecordingObserver())
    with pytest.raises(ClassifiedError):
        await synthesize(guarded, TEXT)
    assert tts_sim.state.log.count() == 2
    await guarded.aclose()


@pytest.mark.parametrize(
    "fault",
    [Fault(FaultType.QUOTA), Fault(FaultType.STATUS, status=429), Fault(FaultType.CUT)],
    ids=["402", "429", "cut-after-audio"],
)
async def test_tts_refusals_and_late_failures_are_not_retried(
    tts_sim: CartesiaSimulator, store: DocumentStore, fault: Fault
) -> None:
    tts_sim.state.plan.once(fault)
    guarded = _tts(tts_sim, store, RecordingObserver())
    with pytest.raises(ClassifiedError):
        await synthesize(guarded, TEXT)
    assert tts_sim.state.log.count() == 1
    await guarded.aclose()


# -- STT (batch) ---------------------------------------------------------------------------
# max_retry=0, as a chain asks: LiveKit's own recognize() loop would otherwise retry with a pause
@pytest.mark.parametrize(("faults", "attempts"), [(1, 2), (2, 2)], ids=["one-503", "two-503s"])
async def test_stt_batch_one_503_is_retried_once(
    llm_sim: OpenAISimulator, store: DocumentStore, faults: int, attempts: int
) -> None:
    llm_sim.state.plan.once(Fault(FaultType.STATUS, status=503), times=faults)
    observer = RecordingObserver()
    guard = Guard("stt:openai", store, deadline=AdaptiveDeadline(ROOMY), observers=[observer])
    guarded = GuardedSTT(openai.STT(base_url=llm_sim.base_url, api_key="sim-key"), guard)
    silence = rtc.AudioFrame(
        data=b"\x00\x00" * 8000, sample_rate=16000, num_channels=1, samples_per_channel=8000
    )
    once = APIConnectOptions(max_retry=0)
    if faults == 1:
        await guarded.recognize([silence], conn_options=once)
    else:
        with pytest.raises(ClassifiedError):
            await guarded.recognize([silence], conn_options=once)
    await guard.drain()
    assert llm_sim.state.log.count() == attempts
    assert len(observer.failures) == faults
    await guarded.aclose()


# -- the time budget -----------------------------------------------------------------------
async def test_a_503_that_took_over_half_the_deadline_is_not_retried(
    store: DocumentStore,
) -> None:
    guard = Guard("llm:slow-gateway", store, deadline=AdaptiveDeadline(TIGHT))
    half = guard.deadline.first_s / 2
    calls = 0

    async def gateway(delay_s: float) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(delay_s)
        raise APIStatusError("bad gateway", status_code=503, body=None)

    with pytest.raises(ClassifiedError):
        await guard.run(lambda: gateway(half * 1.5), delivered=lambda: False)
    assert calls == 1
    calls = 0
    with pytest.raises(ClassifiedError):
        await guard.run(lambda: gateway(0.0), delivered=lambda: False)
    assert calls == 2  # fast: retried once, then given up
    await guard.drain()


# -- TTS stream (WebSocket) ----------------------------------------------------------------
async def _stream(adapter: GuardedTTS, text: str) -> bytes:
    audio = bytearray()
    stream = adapter.stream()
    stream.push_text(text)
    stream.end_input()
    try:
        async for chunk in stream:
            audio += bytes(chunk.frame.data.cast("b"))
    finally:
        await stream.aclose()
    return bytes(audio)


@pytest.mark.parametrize(("faults", "attempts"), [(1, 2), (2, 2)], ids=["one-503", "two-503s"])
async def test_tts_stream_replays_its_text_on_the_retry(
    tts_sim: CartesiaSimulator, store: DocumentStore, faults: int, attempts: int
) -> None:
    tts_sim.state.plan.once(Fault(FaultType.STATUS, status=503), times=faults)
    observer = RecordingObserver()
    guarded = _tts(tts_sim, store, observer)
    if faults == 1:
        assert len(await _stream(guarded, TEXT)) > 16000  # all of the text, spoken once
    else:
        with pytest.raises(ClassifiedError):
            await _stream(guarded, TEXT)
    await guarded.guard.drain()
    handshakes = [a for a in tts_sim.state.log.items() if a.detail == "handshake"]
    assert len(handshakes) == attempts
    assert len(observer.failures) == faults
    await guarded.aclose()
