"""The stall rule and the Deepgram simulator together: a long caller turn is not a stall.

The real LiveKit Deepgram plugin streams real speech, paced like a phone line (twice real time),
through ``GuardedSTT`` to the simulator. A provider that sends interim results sends one about
every second of speech however long the turn; one that sends none is left alone while the
caller talks, and a stream that stops answering is still caught.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import stt, utils
from livekit.plugins import deepgram

from plugins.local.audio import silence
from plugins.resilience.deadlines import AdaptiveDeadline, DeadlineSettings
from plugins.resilience.guard import Guard
from plugins.resilience.guard_stt import GuardedSTT
from plugins.resilience.store import DocumentStore
from plugins.sim.deepgram_sim import DeepgramSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.sim.tts_audio import speak
from tests.guard_fixtures import RecordingObserver, clock, store

__all__ = ["clock", "store"]

KEY = "stt:deepgram"
RATE = 16000
# a stall window well inside the turn: the old rule failed any turn longer than this
DEADLINES = DeadlineSettings(floor_s=1.0, ceiling_s=3.0, stall_s=2.5)
LONG_TURN = (
    "my number is five five five one two three four five six seven and my email is john "
    "at example dot com and I would like someone to call me back tomorrow morning"
)
Kind = stt.SpeechEventType


@pytest.fixture(scope="module")
def long_turn() -> np.ndarray:
    from plugins.local.sphinx_stt import SphinxEngine

    SphinxEngine.shared()
    pcm = speak(LONG_TURN, RATE)
    return np.concatenate([silence(0.3, RATE), pcm, silence(1.5, RATE)])


@pytest.fixture
async def sim() -> AsyncIterator[DeepgramSimulator]:
    async with utils.http_context.open(), DeepgramSimulator() as s:
        yield s


async def _stream(
    model: stt.STT[object], pcm: np.ndarray, *, speed: float = 2.0
) -> tuple[list[tuple[float, stt.SpeechEvent]], BaseException | None]:
    """Push ``pcm`` paced at ``speed`` x real time; the events with their arrival times."""
    stream = model.stream()
    events: list[tuple[float, stt.SpeechEvent]] = []
    error: BaseException | None = None
    step = RATE // 50

    async def feed() -> None:
        started = time.perf_counter()
        for n, i in enumerate(range(0, pcm.size - step + 1, step)):
            chunk = pcm[i : i + step]
            stream.push_frame(rtc.AudioFrame(chunk.tobytes(), RATE, 1, chunk.size))
            await asyncio.sleep(max(0.0, started + (n + 1) * 0.02 / speed - time.perf_counter()))
        stream.end_input()

    feeder = asyncio.create_task(feed())
    try:
        async for ev in stream:
            events.append((time.perf_counter(), ev))
    except Exception as e:
        error = e
    finally:
        await utils.aio.cancel_and_wait(feeder)
        await stream.aclose()
    return events, error


@pytest.mark.slow
async def test_interims_keep_coming_through_a_long_turn(
    sim: DeepgramSimulator, long_turn: np.ndarray
) -> None:
    speech_s = long_turn.size / RATE - 1.8
    assert speech_s > 8.0  # a real long turn
    plain = deepgram.STT(api_key="sim-key", base_url=sim.base_url)
    events, error = await _stream(plain, long_turn, speed=1.0)
    await plain.aclose()
    assert error is None
    interims = [at for at, ev in events if ev.type is Kind.INTERIM_TRANSCRIPT]
    finals = [ev.alternatives[0].text for _, ev in events if ev.type is Kind.FINAL_TRANSCRIPT]
    # about one interim per second of speech, however long the utterance has grown
    assert len(interims) >= 0.5 * speech_s, (len(interims), speech_s)
    gaps = np.diff(interims)
    # even on a busy machine, never a stall-sized gap
    assert gaps.max() < DEADLINES.stall_s, gaps
    assert any("example" in f or "tomorrow" in f for f in finals), finals


@pytest.mark.slow
async def test_provider_without_interims_is_not_failed_during_a_long_turn(
    sim: DeepgramSimulator, store: DocumentStore, long_turn: np.ndarray
) -> None:
    observer = RecordingObserver()
    guard = Guard(KEY, store, deadline=AdaptiveDeadline(DEADLINES), observers=[observer])
    quiet = deepgram.STT(api_key="sim-key", base_url=sim.base_url, interim_results=False)
    guarded = GuardedSTT(quiet, guard)
    events, error = await _stream(guarded, long_turn)
    await guard.drain()
    await guarded.aclose()
    assert error is None
    assert not any(ev.type is Kind.INTERIM_TRANSCRIPT for _, ev in events)
    assert [ev for _, ev in events if ev.type is Kind.FINAL_TRANSCRIPT]
    assert observer.kinds(KEY) == []  # no stall, no timeout: it was listening
    assert observer.successes


@pytest.mark.parametrize("interims", [True, False], ids=["interim-sender", "finals-only"])
async def test_a_stalled_stream_is_still_caught(
    sim: DeepgramSimulator, store: DocumentStore, long_turn: np.ndarray, interims: bool
) -> None:
    # an interim sender shows it first (SpeechStarted and two interims), then stalls
    sim.state.plan.always(Fault(FaultType.STALL, after_chunks=3 if interims else 0))
    observer = RecordingObserver()
    guard = Guard(KEY, store, deadline=AdaptiveDeadline(DEADLINES), observers=[observer])
    model = deepgram.STT(api_key="sim-key", base_url=sim.base_url, interim_results=interims)
    guarded = GuardedSTT(model, guard)
    speech_s = 8.0
    pcm = np.concatenate([long_turn[: int(RATE * speech_s)], silence(4.0, RATE)])  # then a pause
    started = time.perf_counter()
    _, error = await _stream(guarded, pcm, speed=1.0)
    await guard.drain()
    await guarded.aclose()
    assert error is not None
    assert observer.kinds(KEY)[:1] == ["stall"]
    # an interim sender is caught one stall window after its last interim, while the caller
    # is still speaking; a finals-only one a stall window after the caller paused
    waited = time.perf_counter() - started
    stall = DEADLINES.stall_s
    if interims:
        assert waited < speech_s, waited
    else:
        assert speech_s + stall - 0.1 < waited < speech_s + stall + 1.5, waited
