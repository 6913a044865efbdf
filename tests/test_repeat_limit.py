"""Repeated identical plugin warnings are logged once per attempt, the rest counted.

Deepgram's simulator sends only frames that do not parse; the real LiveKit plugin logs a
traceback per frame. Through a guarded STT the first one is logged, the repeats are summed
in one line naming the provider, and the attempt fails over as it should.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIError, utils
from livekit.plugins import deepgram
from structlog.testing import capture_logs

from plugins.resilience.deadlines import AdaptiveDeadline, DeadlineSettings
from plugins.resilience.guard import Guard
from plugins.resilience.guard_stt import GuardedSTT
from plugins.resilience.repeat_limit import attempt_scope
from plugins.resilience.store import DocumentStore
from plugins.sim.deepgram_sim import DeepgramSimulator
from plugins.sim.faults import Fault, FaultType
from tests.guard_fixtures import clock, store

__all__ = ["clock", "store"]

KEY = "stt:deepgram"
RATE = 16000
DEADLINES = DeadlineSettings(floor_s=1.0, ceiling_s=3.0, stall_s=2.0)


@pytest.fixture(scope="module")
def speech() -> list[rtc.AudioFrame]:
    from plugins.local.hibari_tts import HibariEngine
    from plugins.local.sphinx_stt import SphinxEngine

    SphinxEngine.shared()  # the simulator transcribes with it
    engine = HibariEngine.shared()
    pcm = engine.synthesize("I would like to book an appointment for next week")
    x = np.interp(
        np.arange(0, len(pcm) * RATE / engine.sample_rate) * engine.sample_rate / RATE,
        np.arange(len(pcm)),
        pcm.astype(np.float32),
    ).astype(np.int16)
    x = np.concatenate([np.zeros(RATE // 5, np.int16), x, np.zeros(RATE, np.int16)])
    step = RATE // 50
    return [
        rtc.AudioFrame(x[i : i + step].tobytes(), RATE, 1, step)
        for i in range(0, len(x) - step + 1, step)
    ]


@pytest.fixture
async def sim() -> AsyncIterator[DeepgramSimulator]:
    async with utils.http_context.open(), DeepgramSimulator() as s:
        yield s


async def transcribe(guarded: GuardedSTT, frames: list[rtc.AudioFrame]) -> None:
    stream = guarded.stream()

    async def feed() -> None:
        with contextlib.suppress(RuntimeError):  # the attempt may fail (and close) first
            for i, frame in enumerate(frames):
                stream.push_frame(frame)
                if i % 25 == 0:
                    await asyncio.sleep(0.01)
            stream.flush()
            stream.end_input()

    feeder = asyncio.create_task(feed())
    try:
        async for _ in stream:
            pass
    finally:
        await utils.aio.cancel_and_wait(feeder)
        await stream.aclose()


async def test_garbage_frames_give_one_warning_per_attempt(
    sim: DeepgramSimulator,
    store: DocumentStore,
    speech: list[rtc.AudioFrame],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim.state.plan.always(Fault(FaultType.GARBAGE, after_chunks=0))
    guard = Guard(KEY, store, deadline=AdaptiveDeadline(DEADLINES))
    guarded = GuardedSTT(deepgram.STT(api_key="sim-key", base_url=sim.base_url), guard)
    with capture_logs() as logs, caplog.at_level(logging.WARNING):
        with pytest.raises(APIError):
            await transcribe(guarded, speech * 3)  # several utterances of garbage replies
        await guard.drain()
    await guarded.aclose()
    plugin_lines = [r for r in caplog.records if "failed to process deepgram" in r.getMessage()]
    assert len(plugin_lines) == 1
    (summary,) = [e for e in logs if e["event"].startswith("repeated provider warnings")]
    assert summary["provider"] == KEY and summary["held_back"] >= 1


def test_outside_an_attempt_nothing_is_held_back(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("livekit.plugins.deepgram")
    with caplog.at_level(logging.WARNING):
        with attempt_scope("stt:deepgram"):
            for _ in range(3):
                logger.warning("same words")
            logger.warning("other words")
        for _ in range(2):
            logger.warning("same words")
    messages = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert messages == ["same words", "other words", "same words", "same words"]
