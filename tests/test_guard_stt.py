"""GuardedSTT with the real Deepgram plugin against the Deepgram simulator and the real store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import stt, utils
from livekit.plugins import deepgram

from plugins.chain import Chains, build_chains
from plugins.resilience.deadlines import AdaptiveDeadline, DeadlineSettings
from plugins.resilience.guard import Guard
from plugins.resilience.guard_stt import GuardedSTT
from plugins.resilience.store import DocumentStore
from plugins.resilience.types import BreakerState
from plugins.sim.deepgram_sim import DeepgramSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.spec import ProviderSpec
from tests.guard_fixtures import FakeClock, RecordingObserver, clock, store

__all__ = ["clock", "store"]

KEY = "stt:deepgram"
# generous: the simulator transcribes with PocketSphinx on a shared 2-core machine
FAST = {"stt": DeadlineSettings(floor_s=1.0, ceiling_s=3.0, stall_s=4.0)}
SENTENCE = "I would like to book an appointment for next week"
RATE = 16000


@pytest.fixture(scope="module")
def speech() -> list[rtc.AudioFrame]:
    """Real speech (hibari) with trailing silence, as 20 ms frames at 16 kHz."""
    from plugins.local.hibari_tts import HibariEngine
    from plugins.local.sphinx_stt import SphinxEngine

    SphinxEngine.shared()  # the simulator transcribes with it: load it before any deadline
    engine = HibariEngine.shared()
    pcm = engine.synthesize(SENTENCE)
    x = np.interp(
        np.arange(0, len(pcm) * RATE / engine.sample_rate) * engine.sample_rate / RATE,
        np.arange(len(pcm)),
        pcm.astype(np.float32),
    ).astype(np.int16)
    x = np.concatenate([np.zeros(RATE // 5, np.int16), x, np.zeros(RATE, np.int16)])
    step = RATE // 50
    return [
        rtc.AudioFrame(x[i : i + step].tobytes(), RATE, 1, len(x[i : i + step]))
        for i in range(0, len(x) - step + 1, step)
    ]


@pytest.fixture
async def sim() -> AsyncIterator[DeepgramSimulator]:
    async with utils.http_context.open(), DeepgramSimulator() as s:
        yield s


async def _transcribe(
    model: stt.STT[object], frames: list[rtc.AudioFrame], *, lead_in_s: float = 0.0
) -> str:
    """Stream the frames (faster than real time), then return the final transcripts.

    ``lead_in_s``: wait after the first (silent) frame, as a real call's audio would.
    """
    stream = model.stream()
    finals: list[str] = []

    async def feed() -> None:
        for i, frame in enumerate(frames):
            if i == 1 and lead_in_s:
                await asyncio.sleep(lead_in_s)
            stream.push_frame(frame)
            if i % 25 == 0:
                await asyncio.sleep(0)
        stream.flush()
        stream.end_input()

    feeder = asyncio.create_task(feed())
    try:
        async for ev in stream:
            if ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT and ev.alternatives:
                finals.append(ev.alternatives[0].text)
    finally:
        await utils.aio.cancel_and_wait(feeder)
        await stream.aclose()
    return " ".join(t for t in finals if t).strip()


async def test_happy_path_transcript_passes_through(
    store: DocumentStore, speech: list[rtc.AudioFrame]
) -> None:
    """The guard hands on Deepgram's words unchanged. The simulator hears the script, not
    PocketSphinx: an incremental decode depends on how the audio happened to be chunked, so two
    runs of the same speech could differ on a loaded machine without any fault of the guard."""
    observer = RecordingObserver()
    guard = Guard(KEY, store, deadline=AdaptiveDeadline(FAST["stt"]), observers=[observer])
    async with utils.http_context.open(), DeepgramSimulator(script=SENTENCE) as sim:
        guarded = GuardedSTT(deepgram.STT(api_key="sim-key", base_url=sim.base_url), guard)
        plain = deepgram.STT(api_key="sim-key", base_url=sim.base_url)
        expected = await _transcribe(plain, speech)
        got = await _transcribe(guarded, speech)
        await guard.drain()
        await guarded.aclose()
        await plain.aclose()
    assert expected.rstrip(".") == SENTENCE and got == expected  # (punctuated by Deepgram)
    assert observer.successes and observer.successes[0][0] == KEY
    health = await store.health(KEY)
    assert health.state is BreakerState.CLOSED
    assert health.usage["audio_seconds"] == pytest.approx(len(speech) * 0.02, rel=0.05)


def _chains(
    sim: DeepgramSimulator, store: DocumentStore, clock: FakeClock, observer: RecordingObserver
) -> Chains:
    spec = ProviderSpec("stt", "deepgram", base_url=sim.base_url, api_key="sim-key")
    return build_chains(
        [spec], store, observers=[observer], deadlines=FAST, clock=clock, probes=False
    )


async def test_silent_primary_is_abandoned_and_learned_by_the_next_call(
    sim: DeepgramSimulator,
    store: DocumentStore,
    clock: FakeClock,
    speech: list[rtc.AudioFrame],
) -> None:
    sim.state.plan.always(Fault(FaultType.HANG))
    observer = RecordingObserver()
    first = _chains(sim, store, clock, observer)
    await _transcribe(first.stt, speech)
    for g in first.guards.values():
        await g.guard.drain()
    assert observer.kinds(KEY)[:1] in (["timeout"], ["stall"])
    assert (await store.health(KEY)).state is BreakerState.OPEN
    seen = sim.state.log.count()

    second = _chains(sim, store, clock, observer)
    # the local floor hears the caller: the primary is skipped before any audio is lost
    heard = await _transcribe(second.stt, speech, lead_in_s=0.1)
    assert sim.state.log.count() == seen
    assert "appointment" in heard
    await first.aclose()
    await second.aclose()
