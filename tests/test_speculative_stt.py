"""SpeculativeStreamAdapter: the final is recognised during the VAD's silence window.

Real Silero VAD on real (eSpeak) speech; the recogniser is a small batch STT whose answers we
can hold back, so the tests decide whether a speculation returns before the caller speaks
again. Frames are pushed faster than real time: the VAD's events keep their order.
"""

from __future__ import annotations

import asyncio
from typing import Any, Never

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIError, stt, utils
from livekit.agents.types import NOT_GIVEN, APIConnectOptions, NotGivenOr
from livekit.plugins import silero

from plugins.local.audio import Int16Array, resample
from plugins.local.espeak_tts import EspeakEngine
from plugins.local.speculative_stt import SpeculativeStreamAdapter

RATE = 16000
CHUNK = 320  # 20 ms


class HeldSTT(stt.STT[Never]):
    """Batch STT answering "words<N>" (N = the call's number); with ``hold_first`` the first
    call answers only once ``release`` is set."""

    def __init__(self, *, fail: bool = False, hold_first: bool = False) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self.calls: list[float] = []  # seconds of audio per call
        self.release = asyncio.Event()
        if not hold_first:
            self.release.set()
        self.fail = fail
        self.cancelled = 0

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = utils.merge_frames(buffer) if isinstance(buffer, list) else buffer
        self.calls.append(frame.duration)
        n = len(self.calls)
        if n == 1:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.fail:
            raise APIError("recogniser down", retryable=False)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(language="en", text=f"words{n}")],
        )


@pytest.fixture(scope="module")
def phrase() -> Int16Array:
    engine = EspeakEngine.shared()
    pcm = engine.synthesize("I would like to know your pricing", voice="en-us")
    return resample(pcm, engine.sample_rate, RATE)


@pytest.fixture(scope="module")
def vad() -> Any:
    return silero.VAD.load(min_silence_duration=0.55)


def push(stream: stt.RecognizeStream, pcm: Int16Array) -> None:
    for i in range(0, pcm.size, CHUNK):
        part = pcm[i : i + CHUNK]
        stream.push_frame(rtc.AudioFrame(part.tobytes(), RATE, 1, part.size))


def quiet(seconds: float) -> Int16Array:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


async def events_until(
    stream: stt.RecognizeStream, kind: stt.SpeechEventType, seen: list[stt.SpeechEvent]
) -> None:
    async def wait() -> None:
        async for ev in stream:
            seen.append(ev)
            if ev.type == kind:
                return

    await asyncio.wait_for(wait(), 10.0)


def kinds(events: list[stt.SpeechEvent]) -> list[str]:
    return [
        ev.type.name + (f":{ev.alternatives[0].text}" if ev.alternatives else "") for ev in events
    ]


async def test_final_is_sent_during_the_silence_window(phrase: Int16Array, vad: Any) -> None:
    recogniser = HeldSTT()
    adapter = SpeculativeStreamAdapter(stt=recogniser, vad=vad, speculate_after_s=0.2)
    stream = adapter.stream()
    seen: list[stt.SpeechEvent] = []
    # speech then only 0.35 s of silence: less than the VAD's 0.55 s window
    push(stream, np.concatenate([quiet(0.3), phrase, quiet(0.35)]))
    await events_until(stream, stt.SpeechEventType.FINAL_TRANSCRIPT, seen)
    assert kinds(seen) == ["START_OF_SPEECH", "FINAL_TRANSCRIPT:words1"]
    push(stream, quiet(1.0))  # now the VAD closes the turn: no second recognition
    await events_until(stream, stt.SpeechEventType.END_OF_SPEECH, seen)
    stream.end_input()
    async for ev in stream:
        seen.append(ev)
    assert kinds(seen) == ["START_OF_SPEECH", "FINAL_TRANSCRIPT:words1", "END_OF_SPEECH"]
    assert len(recogniser.calls) == 1
    assert recogniser.calls[0] >= phrase.size / RATE  # the whole utterance, not a fragment
    assert (adapter.stats.started, adapter.stats.used, adapter.stats.discarded) == (1, 1, 0)
    await stream.aclose()


async def test_speech_resuming_before_the_result_discards_it(phrase: Int16Array, vad: Any) -> None:
    recogniser = HeldSTT(hold_first=True)  # the first speculation cannot return in time
    adapter = SpeculativeStreamAdapter(stt=recogniser, vad=vad, speculate_after_s=0.2)
    stream = adapter.stream()
    seen: list[stt.SpeechEvent] = []
    push(stream, np.concatenate([quiet(0.3), phrase, quiet(0.35), phrase, quiet(1.0)]))
    # the VAD saw the caller speak again before closing the turn
    await events_until(stream, stt.SpeechEventType.END_OF_SPEECH, seen)
    recogniser.release.set()  # the held speculation returns now, too late to count
    stream.end_input()
    async for ev in stream:
        seen.append(ev)
    finals = [ev for ev in seen if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert len(finals) == 1  # only the whole utterance's transcript reached the session
    # the final covers both phrases: one recognition of everything after the discarded one
    assert recogniser.calls[-1] >= 2 * phrase.size / RATE
    assert finals[0].alternatives[0].text == f"words{len(recogniser.calls)}"
    assert adapter.stats.discarded == 1
    assert recogniser.cancelled == 1  # withdrawn, so a shared service can drop it unrun
    await stream.aclose()


async def test_after_a_sent_final_only_new_words_are_recognised(
    phrase: Int16Array, vad: Any
) -> None:
    recogniser = HeldSTT()
    adapter = SpeculativeStreamAdapter(stt=recogniser, vad=vad, speculate_after_s=0.2)
    stream = adapter.stream()
    seen: list[stt.SpeechEvent] = []
    push(stream, np.concatenate([quiet(0.3), phrase, quiet(0.35)]))
    await events_until(stream, stt.SpeechEventType.FINAL_TRANSCRIPT, seen)
    push(stream, np.concatenate([phrase, quiet(1.0)]))  # the caller goes on after the pause
    await events_until(stream, stt.SpeechEventType.END_OF_SPEECH, seen)
    stream.end_input()
    async for ev in stream:
        seen.append(ev)
    finals = [ev.alternatives[0].text for ev in seen if ev.alternatives]
    assert finals == ["words1", "words2"]
    # the second recognition holds the second phrase (and the pause), not the first again
    assert recogniser.calls[1] < phrase.size / RATE + 1.0
    await stream.aclose()


async def test_a_failing_recogniser_fails_the_stream_as_livekit_does(
    phrase: Int16Array, vad: Any
) -> None:
    adapter = SpeculativeStreamAdapter(stt=HeldSTT(fail=True), vad=vad)
    stream = adapter.stream()
    push(stream, np.concatenate([quiet(0.3), phrase, quiet(1.0)]))
    stream.end_input()
    with pytest.raises(APIError):
        async for _ in stream:
            pass
    await stream.aclose()


def test_is_a_livekit_stream_adapter() -> None:
    inner = HeldSTT()
    adapter = SpeculativeStreamAdapter(stt=inner, vad=silero.VAD.load())
    assert isinstance(adapter, stt.StreamAdapter)
    assert adapter.wrapped_stt is inner
    assert adapter.capabilities.streaming
    with pytest.raises(ValueError, match="speculate_after_s"):
        SpeculativeStreamAdapter(stt=inner, vad=silero.VAD.load(), speculate_after_s=0.0)
