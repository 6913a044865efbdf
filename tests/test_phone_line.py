"""The virtual phone line: paced caller audio in, simulated playout out, turns with deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import AgentSession, llm, vad
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.plugins import silero

from agent.sales_agent import SalesAgent
from plugins.local.hibari_tts import HibariEngine, HibariTTS
from plugins.local.sphinx_stt import SphinxEngine, SphinxSTT
from plugins.sim.phone_line import (
    CallerAudioInput,
    PhoneLine,
    PhoneLineTimeoutError,
    PlayoutAudioOutput,
    longest_silence,
    speech_seconds,
    trailing_silence,
)

RATE = 24000


def tone(seconds: float, rate: int = RATE) -> np.ndarray[Any, np.dtype[np.int16]]:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


def frames(pcm: np.ndarray[Any, np.dtype[np.int16]], ms: int = 20) -> list[rtc.AudioFrame]:
    n = RATE * ms // 1000
    return [
        rtc.AudioFrame(pcm[i : i + n].tobytes(), RATE, 1, len(pcm[i : i + n]))
        for i in range(0, len(pcm), n)
    ]


# -- the earpiece (agent audio out) ------------------------------------------------------------


async def test_playout_takes_the_audio_duration_and_reports_it() -> None:
    out = PlayoutAudioOutput(sample_rate=RATE)
    started: list[float] = []
    out.on("playback_started", lambda ev: started.append(ev.created_at))
    begin = time.monotonic()
    for frame in frames(tone(0.3)):
        await out.capture_frame(frame)
    out.flush()
    assert out.playing
    ev = await asyncio.wait_for(out.wait_for_playout(), 5)

    assert time.monotonic() - begin >= 0.29  # finished when the caller would have heard it all
    assert ev.playback_position == pytest.approx(0.3)
    assert not ev.interrupted
    assert len(started) == 1
    assert not out.playing
    assert out.agent_track(since=started[0]).size == pytest.approx(0.3 * RATE, abs=RATE * 0.01)


async def test_speed_shortens_playout_but_not_the_reported_position() -> None:
    out = PlayoutAudioOutput(sample_rate=RATE, speed=4.0)
    begin = time.monotonic()
    for frame in frames(tone(0.4)):
        await out.capture_frame(frame)
    out.flush()
    ev = await asyncio.wait_for(out.wait_for_playout(), 5)
    assert time.monotonic() - begin < 0.4
    assert ev.playback_position == pytest.approx(0.4)


async def test_late_audio_is_an_underrun_gap() -> None:
    out = PlayoutAudioOutput(sample_rate=RATE)
    first, second = frames(tone(0.04))
    await out.capture_frame(first)
    await asyncio.sleep(0.15)  # the TTS stalls: the 20 ms frame ran out long ago
    await out.capture_frame(second)
    out.flush()
    await asyncio.wait_for(out.wait_for_playout(), 5)
    (segment,) = out.segments
    assert len(segment.underruns) == 1
    assert 0.1 <= segment.underruns[0] < 1.0


async def test_clear_buffer_interrupts_and_keeps_only_what_was_heard() -> None:
    out = PlayoutAudioOutput(sample_rate=RATE)
    for frame in frames(tone(2.0)):
        await out.capture_frame(frame)
    out.flush()
    await asyncio.sleep(0.2)
    out.clear_buffer()
    ev = await asyncio.wait_for(out.wait_for_playout(), 1)

    assert ev.interrupted
    assert 0.15 <= ev.playback_position < 1.0
    (segment,) = out.segments
    heard = sum(f.pcm.size for f in segment.frames) / RATE
    assert heard == pytest.approx(ev.playback_position, abs=0.03)
    assert not out.playing


async def test_clear_while_capturing_ends_the_segment_once_at_flush() -> None:
    out = PlayoutAudioOutput(sample_rate=RATE)
    finished: list[bool] = []
    out.on("playback_finished", lambda ev: finished.append(ev.interrupted))
    audio = frames(tone(1.0))
    for frame in audio[:10]:
        await out.capture_frame(frame)
    out.clear_buffer()  # interrupted mid-capture: LiveKit flushes the segment afterwards
    for frame in audio[10:]:
        await out.capture_frame(frame)  # the rest of the TTS output is never heard
    assert finished == []
    out.flush()
    ev = await asyncio.wait_for(out.wait_for_playout(), 1)

    assert finished == [True] and ev.interrupted
    (segment,) = out.segments
    assert sum(f.pcm.size for f in segment.frames) / RATE < 0.2


async def test_wrong_sample_rate_is_refused_with_the_expected_format() -> None:
    out = PlayoutAudioOutput(sample_rate=RATE)
    with pytest.raises(ValueError, match="mono 24000 Hz"):
        await out.capture_frame(rtc.AudioFrame(bytes(320), 16000, 1, 160))


# -- the caller's microphone -------------------------------------------------------------------


async def test_caller_input_sends_speech_then_silence_in_paced_frames() -> None:
    line = CallerAudioInput(sample_rate=16000, frame_ms=20, speed=8.0)
    speech = np.full(1600, 1000, dtype=np.int16)  # 100 ms
    done = line.speak(speech)
    begin = time.monotonic()
    got = [await line.__anext__() for _ in range(25)]  # 500 ms of line audio

    assert time.monotonic() - begin >= 0.45 / 8
    assert all(f.samples_per_channel == 320 and f.sample_rate == 16000 for f in got)
    loud = [bool(np.frombuffer(f.data, np.int16).any()) for f in got]
    assert loud == [True] * 5 + [False] * 20
    assert done.done() and done.result() <= time.time() + 0.1
    line.close()
    with pytest.raises(StopAsyncIteration):
        await line.__anext__()


async def test_a_session_reading_late_does_not_slow_the_callers_clock() -> None:
    """The caller stops talking on the line's clock; a session that reads its input late (a
    starved event loop) has that lag in its response time, not hidden in the caller's."""
    line = CallerAudioInput(sample_rate=16000, frame_ms=20)
    await line.__anext__()  # the line is open
    spoke = time.time()
    done = line.speak(np.full(3200, 1000, dtype=np.int16))  # 200 ms of speech
    assert line._started_at is not None
    line._started_at -= 1.0  # the session has fallen 1 s behind the line: everything is overdue
    frames = []
    while not done.done():
        frames.append(await line.__anext__())  # read in one late burst
    read_at = time.time()
    assert read_at - spoke < 0.15
    # the caller finished 200 ms after starting on the line's clock, 1 s before the late read
    assert done.result() == pytest.approx(spoke + 0.2 - 1.0, abs=0.05)
    loud = [bool(np.frombuffer(f.data, np.int16).any()) for f in frames]
    assert loud[-10:] == [True] * 10
    line.close()


def test_caller_input_rejects_bad_settings_and_audio() -> None:
    with pytest.raises(ValueError, match="speed"):
        CallerAudioInput(speed=100)
    with pytest.raises(ValueError, match="frame_ms"):
        CallerAudioInput(frame_ms=5)


async def test_caller_input_rejects_non_mono_int16() -> None:
    line = CallerAudioInput()
    with pytest.raises(ValueError, match="mono int16"):
        line.speak(np.zeros(10, dtype=np.float32))  # type: ignore[arg-type]


def test_silence_measures() -> None:
    gap = np.zeros(int(0.5 * RATE), dtype=np.int16)
    pcm = np.concatenate([tone(0.2), gap, tone(0.2), np.zeros(int(0.3 * RATE), np.int16)])
    assert longest_silence(pcm, RATE) == pytest.approx(0.5, abs=0.04)
    assert trailing_silence(pcm, RATE) == pytest.approx(0.3, abs=0.04)
    assert speech_seconds(pcm, RATE) == pytest.approx(0.4, abs=0.04)
    assert speech_seconds(np.zeros(RATE, np.int16), RATE) == 0


# -- a whole line with deadlines -----------------------------------------------------------------


class NeverAnswersLLM(llm.LLM[Any]):
    """An LLM that accepts the request and never produces a token (a hung provider)."""

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> llm.LLMStream:
        return _Hang(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _Hang(llm.LLMStream):
    async def _run(self) -> None:
        await asyncio.Event().wait()


@pytest.fixture(scope="module")
def silero_vad() -> vad.VAD:
    HibariEngine.shared()
    SphinxEngine.shared()
    return silero.VAD.load()


@pytest.fixture
async def hung_line(silero_vad: vad.VAD) -> AsyncIterator[PhoneLine]:
    session: AgentSession[None] = AgentSession(
        stt=SphinxSTT(), llm=NeverAnswersLLM(), tts=HibariTTS(), vad=silero_vad
    )
    greeting = "Hello, Alex speaking."
    async with PhoneLine(session, SalesAgent(greeting=greeting), speed=4.0) as line:
        first = await line.listen(timeout=20)
        assert first.text == greeting and first.answered
        yield line


async def test_a_silent_agent_times_out_with_a_clear_error(hung_line: PhoneLine) -> None:
    begin = time.monotonic()
    with pytest.raises(PhoneLineTimeoutError) as caught:
        await hung_line.say("What does it cost?", timeout=2.0)

    assert time.monotonic() - begin < 15  # the deadline holds: the line never hangs
    message = str(caught.value)
    assert "did not answer within 2 s" in message
    assert "What does it cost?" in message
    turn = caught.value.turn
    assert turn is not None and not turn.answered
    assert "cost" in turn.heard.lower()  # the agent heard the caller; the LLM is what hung
    with pytest.raises(ValueError, match="non-empty"):
        await hung_line.say("  ")
