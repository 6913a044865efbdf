"""GuardedTTS with the real Cartesia plugin against the Cartesia simulator and the real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit.agents import tts, utils
from livekit.plugins import cartesia

from plugins.chain import Chains, build_chains
from plugins.local.pcm_tts import EngineTTS
from plugins.resilience.deadlines import AdaptiveDeadline, DeadlineSettings
from plugins.resilience.failures import ClassifiedError, ProviderUnavailableError
from plugins.resilience.guard import Guard
from plugins.resilience.guard_tts import GuardedTTS
from plugins.resilience.store import DocumentStore
from plugins.resilience.types import BreakerState, FailureKind
from plugins.sim.cartesia_sim import REJECTED_KEY, WS_ROUTE, CartesiaSimulator
from plugins.sim.elevenlabs_sim import REJECTED_KEY as ELEVEN_REJECTED_KEY
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.spec import ProviderSpec
from tests.guard_fixtures import (
    FakeClock,
    RecordingObserver,
    ServedBy,
    clock,
    make_store,
    store,
    synthesize,
)

__all__ = ["clock", "store"]

KEY = "tts:cartesia"
FAST = {"tts": DeadlineSettings(floor_s=0.3, ceiling_s=0.6, stall_s=1.0)}
TEXT = "Thanks for calling, how can I help?"


@pytest.fixture(scope="module")
def warm_engines() -> None:
    from plugins.local.espeak_tts import EspeakEngine
    from plugins.local.hibari_tts import HibariEngine

    HibariEngine.shared().synthesize("warm up")
    EspeakEngine.shared()


@pytest.fixture
async def sim(warm_engines: None) -> AsyncIterator[CartesiaSimulator]:
    async with utils.http_context.open(), CartesiaSimulator() as s:
        yield s


def _chains(
    sim: CartesiaSimulator,
    store: DocumentStore,
    clock: FakeClock,
    observer: RecordingObserver,
    *,
    key: str = "sim-key",
) -> Chains:
    spec = ProviderSpec("tts", "cartesia", base_url=sim.base_url, api_key=key)
    return build_chains(
        [spec], store, observers=[observer], deadlines=FAST, clock=clock, probes=False
    )


async def _settle(chains: Chains) -> None:
    for guarded in chains.guards.values():
        await guarded.guard.drain()


async def test_happy_path_passes_audio_through_unchanged(
    sim: CartesiaSimulator, store: DocumentStore
) -> None:
    plain = cartesia.TTS(api_key="sim-key", base_url=sim.base_url)
    observer = RecordingObserver()
    guard = Guard(KEY, store, deadline=AdaptiveDeadline(FAST["tts"]), observers=[observer])
    guarded = GuardedTTS(cartesia.TTS(api_key="sim-key", base_url=sim.base_url), guard)
    expected = await synthesize(plain, TEXT)
    got = await synthesize(guarded, TEXT)
    await guard.drain()
    # the simulator's neural voice is not bit-exact run to run: same length, same speech
    assert len(got) == len(expected) > 0
    a, b = np.frombuffer(got, np.int16), np.frombuffer(expected, np.int16)
    assert float(np.corrcoef(a, b)[0, 1]) > 0.9
    assert observer.successes and observer.successes[0][0] == KEY
    assert (KEY, "characters", float(len(TEXT))) in observer.usage
    health = await store.health(KEY)
    assert health.state is BreakerState.CLOSED and health.requests == 1
    assert health.usage["characters"] == len(TEXT)
    await guarded.aclose()
    await plain.aclose()


class _ToneEngine:
    """Bit-exact speech stand-in: one tone per character (the real voices vary run to run)."""

    sample_rate = 16000

    def synthesize(self, text: str) -> np.ndarray:
        t = np.arange(800) / self.sample_rate
        return np.concatenate(
            [(8000 * np.sin(2 * np.pi * (200 + ord(c)) * t)).astype(np.int16) for c in text]
        )


def _tone_tts() -> EngineTTS:
    return EngineTTS(
        load_engine=_ToneEngine, sample_rate=16000, label="tone", provider="test", model="tone"
    )


async def test_guard_is_transparent_on_a_deterministic_voice(store: DocumentStore) -> None:
    guard = Guard("tts:free-tts", store, deadline=AdaptiveDeadline(FAST["tts"]))
    guarded = GuardedTTS(_tone_tts(), guard)
    plain = _tone_tts()
    assert await synthesize(guarded, TEXT) == await synthesize(plain, TEXT)
    stream = guarded.stream()
    stream.push_text(TEXT)
    stream.end_input()
    streamed = bytearray()
    async for chunk in stream:
        streamed += bytes(chunk.frame.data.cast("b"))
    await stream.aclose()
    await guard.drain()
    assert bytes(streamed) == await synthesize(plain, TEXT)
    assert (await store.health("tts:free-tts")).requests == 2
    await guarded.aclose()


async def test_silent_primary_times_out_and_the_floor_answers(
    sim: CartesiaSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.always(Fault(FaultType.HANG))
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    served = ServedBy(chains.tts)
    audio = await synthesize(chains.tts, TEXT)
    await _settle(chains)
    assert len(audio) > 0
    assert observer.kinds(KEY)[:1] == ["timeout"]
    assert "Espeak" in served.last()  # the answer came from the local floor
    assert (await store.health(KEY)).last_failure is FailureKind.TIMEOUT
    await chains.aclose()


async def test_open_breaker_sends_the_provider_no_request(
    sim: CartesiaSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.always(Fault(FaultType.STATUS, status=503))
    observer = RecordingObserver()
    first = _chains(sim, store, clock, observer)
    await synthesize(first.tts, TEXT)
    await _settle(first)
    assert (await store.health(KEY)).state is BreakerState.OPEN
    seen = sim.state.log.count()

    # a second call (a new chain on the same store) learns it at once
    second = _chains(sim, store, clock, observer)
    served = ServedBy(second.tts)
    audio = await synthesize(second.tts, TEXT)
    await _settle(second)
    assert len(audio) > 0 and "Espeak" in served.last()
    assert sim.state.log.count() == seen
    assert observer.skips and observer.skips[-1][0] == KEY
    await first.aclose()
    await second.aclose()


async def test_retry_after_is_honoured_exactly(
    sim: CartesiaSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.once(Fault(FaultType.STATUS, status=429, retry_after_s=30))
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    await synthesize(chains.tts, TEXT)
    await _settle(chains)
    assert observer.failures[0][1].kind is FailureKind.RATE_LIMITED
    assert observer.failures[0][1].retry_after_s == pytest.approx(30)
    seen = sim.state.log.count()

    clock.advance(29)
    guarded = chains.guards[KEY]
    with pytest.raises(ProviderUnavailableError):
        await guarded.guard.admit()
    later = _chains(sim, store, clock, observer)
    await synthesize(later.tts, TEXT)
    await _settle(later)
    assert sim.state.log.count() == seen  # nothing reached the provider before Retry-After

    clock.advance(2)
    assert await later.probers[KEY].try_probe() is True  # one synthetic probe, then closed
    assert sim.state.log.count() == seen + 1
    await chains.aclose()
    await later.aclose()


async def test_one_probe_per_window_whatever_the_number_of_chains(
    sim: CartesiaSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.once(Fault(FaultType.STATUS, status=500))
    observer = RecordingObserver()
    chains = [_chains(sim, store, clock, observer) for _ in range(3)]
    await synthesize(chains[0].tts, TEXT)
    await _settle(chains[0])
    health = await store.health(KEY)
    assert health.state is BreakerState.OPEN and health.open_until is not None
    seen = sim.state.log.count()

    clock.now = health.open_until + 0.1
    import asyncio

    results = await asyncio.gather(*(c.probers[KEY].try_probe() for c in chains))
    assert sim.state.log.count() == seen + 1  # exactly one probe for the whole machine
    assert sum(c.probers[KEY].sent for c in chains) == 1
    assert results.count(True) >= 1
    assert (await store.health(KEY)).state is BreakerState.CLOSED

    # the breaker closed: a fresh call goes back to the primary
    fresh = _chains(sim, store, clock, observer)
    served = ServedBy(fresh.tts)
    await synthesize(fresh.tts, TEXT)
    await _settle(fresh)
    assert sim.state.log.count() == seen + 2
    assert "cartesia" in served.last()
    for c in [*chains, fresh]:
        await c.aclose()


async def test_a_caller_never_serves_as_the_half_open_probe(
    sim: CartesiaSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.once(Fault(FaultType.STATUS, status=500))
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    await synthesize(chains.tts, TEXT)
    await _settle(chains)
    health = await store.health(KEY)
    assert health.open_until is not None
    clock.now = health.open_until + 0.1
    seen = sim.state.log.count()

    fresh = _chains(sim, store, clock, observer)
    served = ServedBy(fresh.tts)
    await synthesize(fresh.tts, TEXT)  # wins the half-open lease, hands it to the prober
    prober = fresh.probers[KEY]
    await prober.wait()
    await _settle(fresh)
    assert "Espeak" in served.labels[0]  # the caller's turn went to the floor at once
    assert prober.sent == 1 and sim.state.log.count() == seen + 1  # the probe, not a replay
    assert (await store.health(KEY)).state is BreakerState.CLOSED
    await chains.aclose()
    await fresh.aclose()


async def test_quota_gets_a_long_cooldown(
    sim: CartesiaSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    sim.state.plan.always(Fault(FaultType.QUOTA))
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    await synthesize(chains.tts, TEXT)
    await _settle(chains)
    assert observer.kinds(KEY)[0] == "quota_exhausted"
    health = await store.health(KEY)
    assert health.state is BreakerState.OPEN
    assert health.open_until is not None and health.open_until - clock() >= 3000
    await chains.aclose()


async def test_rejected_key_stays_off(
    sim: CartesiaSimulator, tmp_path: Path, clock: FakeClock
) -> None:
    store = make_store(tmp_path, clock)
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer, key=REJECTED_KEY)
    await synthesize(chains.tts, TEXT)
    await _settle(chains)
    assert observer.kinds(KEY)[0] == "key_rejected"
    seen = sim.state.log.count()
    clock.advance(24 * 3600)
    again = _chains(sim, store, clock, observer, key=REJECTED_KEY)
    await synthesize(again.tts, TEXT)
    assert sim.state.log.count() == seen
    assert (await store.health(KEY)).state is BreakerState.KEY_REJECTED
    await chains.aclose()
    await again.aclose()
    await store.aclose()


async def test_usage_and_cost_are_metered_per_provider(
    sim: CartesiaSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    spec = ProviderSpec(
        "tts",
        "cartesia",
        base_url=sim.base_url,
        api_key="sim-key",
        extra={"price_per_unit_usd": "0.001"},
    )
    observer = RecordingObserver()
    chains = build_chains([spec], store, observers=[observer], deadlines=FAST, clock=clock)
    await synthesize(chains.tts, TEXT)
    await _settle(chains)
    usage = (await store.health(KEY)).usage
    assert usage["characters"] == len(TEXT)
    assert usage["usd"] == pytest.approx(len(TEXT) * 0.001)
    assert (KEY, pytest.approx(len(TEXT) * 0.001)) in observer.costs  # cost: its own event
    assert all(unit != "usd" for _, unit, _ in observer.usage)
    await chains.aclose()


async def test_cut_audio_body_is_truncated(
    sim: CartesiaSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    # /tts/bytes cut mid-body: aiohttp's "Not enough data to satisfy transfer length header"
    # carries its parser's 400, which is no status the provider sent
    sim.state.plan.once(Fault(FaultType.CUT, after_chunks=3))
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    with pytest.raises(ClassifiedError) as raised:
        await synthesize(chains.guards[KEY], TEXT)
    await _settle(chains)
    assert raised.value.failure.kind is FailureKind.TRUNCATED
    assert raised.value.failure.status is None
    assert observer.kinds(KEY) == ["truncated"]
    await chains.aclose()


# -- ElevenLabs: 401 and 1008 mean a rejected key *or* exhausted quota ------------------------

ELEVEN = "tts:elevenlabs"


@pytest.fixture
async def eleven(warm_engines: None) -> AsyncIterator[ElevenLabsSimulator]:
    async with utils.http_context.open(), ElevenLabsSimulator() as s:
        yield s


def _eleven_chains(
    sim: ElevenLabsSimulator,
    store: DocumentStore,
    clock: FakeClock,
    observer: RecordingObserver,
    *,
    key: str = "sim-key",
) -> Chains:
    spec = ProviderSpec("tts", "elevenlabs", base_url=sim.base_url, api_key=key)
    return build_chains(
        [spec], store, observers=[observer], deadlines=FAST, clock=clock, probes=False
    )


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


async def test_elevenlabs_quota_close_on_the_socket_is_quota_and_so_is_the_probe(
    eleven: ElevenLabsSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    # the socket is closed with 1008 and the quota text; the plugin keeps only the code
    eleven.state.plan.always(Fault(FaultType.QUOTA))
    observer = RecordingObserver()
    chains = _eleven_chains(eleven, store, clock, observer)
    guarded = chains.guards[ELEVEN]
    assert isinstance(guarded, GuardedTTS)
    with pytest.raises(ClassifiedError) as raised:
        await _stream(guarded, TEXT)
    await _settle(chains)
    failure = raised.value.failure
    assert (failure.kind, failure.status) == (FailureKind.QUOTA_EXHAUSTED, 1008)
    assert "exceeds your quota" in failure.message
    health = await store.health(ELEVEN)
    assert health.state is BreakerState.OPEN
    assert health.open_until is not None and health.open_until - clock() >= 3000

    # the half-open probe synthesizes over HTTP: 401 {"status": "quota_exceeded"}
    clock.now = health.open_until + 1
    assert await chains.probers[ELEVEN].try_probe() is False
    await _settle(chains)
    assert observer.kinds(ELEVEN) == ["quota_exhausted", "quota_exhausted"]
    assert observer.failures[-1][1].status == 401
    assert (await store.health(ELEVEN)).state is BreakerState.OPEN  # not KEY_REJECTED
    await chains.aclose()


async def test_elevenlabs_quota_over_http_is_quota(
    eleven: ElevenLabsSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    eleven.state.plan.always(Fault(FaultType.QUOTA))
    observer = RecordingObserver()
    chains = _eleven_chains(eleven, store, clock, observer)
    with pytest.raises(ClassifiedError) as raised:
        await synthesize(chains.guards[ELEVEN], TEXT)
    await _settle(chains)
    assert (raised.value.failure.kind, raised.value.failure.status) == (
        FailureKind.QUOTA_EXHAUSTED,
        401,
    )
    await chains.aclose()


@pytest.mark.parametrize("path", ["stream", "synthesize"])
async def test_elevenlabs_rejected_key_is_still_key_rejected(
    eleven: ElevenLabsSimulator, store: DocumentStore, clock: FakeClock, path: str
) -> None:
    observer = RecordingObserver()
    chains = _eleven_chains(eleven, store, clock, observer, key=ELEVEN_REJECTED_KEY)
    guarded = chains.guards[ELEVEN]
    assert isinstance(guarded, GuardedTTS)
    with pytest.raises(ClassifiedError) as raised:
        if path == "stream":
            await _stream(guarded, TEXT)
        else:
            await synthesize(guarded, TEXT)
    await _settle(chains)
    assert raised.value.failure.kind is FailureKind.KEY_REJECTED
    assert (await store.health(ELEVEN)).state is BreakerState.KEY_REJECTED
    await chains.aclose()


async def _stream(adapter: tts.TTS[Any], text: str) -> None:
    async with adapter.stream() as stream:
        stream.push_text(text)
        stream.end_input()
        async for _ in stream:
            pass


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault(FaultType.STATUS, status=429), FailureKind.RATE_LIMITED),
        (Fault(FaultType.QUOTA), FailureKind.QUOTA_EXHAUSTED),
    ],
    ids=["429", "402"],
)
async def test_an_in_band_error_on_a_pooled_socket_is_classified_by_its_status(
    sim: CartesiaSimulator, store: DocumentStore, clock: FakeClock, fault: Fault, kind: FailureKind
) -> None:
    """The socket is already open, so the error comes as a frame (``status_code`` inside),
    which LiveKit's Cartesia plugin reads as the end of the audio: the tap still sees it."""
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    await _stream(chains.tts, TEXT)  # opens the pooled WebSocket
    sim.state.plan.once(fault)
    await _stream(chains.tts, TEXT)  # the floor answers
    await _settle(chains)
    contexts = [a for a in sim.state.log.items() if a.route == WS_ROUTE]
    assert contexts[-1].fault is not None  # the fault came in-band, on the open socket
    assert [f.kind for _, f, _ in observer.failures] == [kind]
    assert (await store.health(KEY)).state is BreakerState.OPEN  # at once, not after 3
    await chains.aclose()


async def test_a_streamed_answer_spoken_while_still_written_is_timed_from_its_first_sentence(
    sim: CartesiaSimulator, store: DocumentStore
) -> None:
    """Cartesia speaks the first sentence while the LLM is still writing: its first-audio
    latency is measured from when that sentence was complete (what the deadline learns from),
    so it is neither negative (audio before the end of input) nor the LLM's writing time."""
    observer = RecordingObserver()
    guard = Guard(KEY, store, deadline=AdaptiveDeadline(FAST["tts"]), observers=[observer])
    guarded = GuardedTTS(cartesia.TTS(api_key="sim-key", base_url=sim.base_url), guard)
    stream = guarded.stream()
    try:
        stream.push_text("Thanks for calling Sunny Solar today. We")
        first = await anext(stream)  # audio while the answer is still being written
        assert first.frame.samples_per_channel > 0
        stream.push_text(" install panels and batteries.")
        stream.end_input()
        async for _ in stream:
            pass
    finally:
        await stream.aclose()
        await guard.drain()
        await guarded.aclose()
    [(key, latency)] = observer.successes
    assert key == KEY and latency is not None
    assert 0.0 < latency < FAST["tts"].ceiling_s
