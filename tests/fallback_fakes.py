"""Small in-process LLM, STT and TTS members for the fallback-adapter contract tests.

Each is a real LiveKit plugin class (``llm.LLM``, ``stt.STT``, ``tts.TTS``) whose streams go
through LiveKit's own base classes (metrics, retries, start times); only the provider behind
them is fake: it answers, fails at once, or fails after some output, as told. They record
how they were called (which method, which connection options), which is what the contract
is about.
"""

from __future__ import annotations

import asyncio
from typing import Any, Never

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, llm, stt, tts, utils
from livekit.agents.llm import ChatChunk, ChatContext, ChoiceDelta, Tool, ToolChoice
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

SECONDS_PER_CHAR = 0.01  # how long the fake voices speak per character
CHUNK_S = 0.01


class Switch:
    """A member's health, flipped by the test: ``down`` makes every new request fail."""

    def __init__(self, down: bool = False) -> None:
        self.down = down


class FakeLLM(llm.LLM[Never]):
    def __init__(self, name: str, *, down: bool = False, text: str = "Hello there.") -> None:
        super().__init__()
        self._label = f"fake.{name}"  # what LiveKit labels the member's metrics with
        self.name = name
        self.health = Switch(down)
        self.text = text
        self.calls: list[APIConnectOptions] = []

    @property
    def model(self) -> str:
        return f"{self.name}-model"

    @property
    def provider(self) -> str:
        return f"{self.name}-provider"

    def chat(
        self,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.calls.append(conn_options)
        return _FakeLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _FakeLLMStream(llm.LLMStream):
    def __init__(self, fake: FakeLLM, **kw: Any) -> None:
        super().__init__(fake, **kw)
        self._fake = fake

    async def _run(self) -> None:
        if self._fake.health.down:
            raise APIConnectionError(f"{self._fake.name} is down", retryable=False)
        for word in self._fake.text.split(" "):
            await asyncio.sleep(0)
            self._event_ch.send_nowait(
                ChatChunk(id="c", delta=ChoiceDelta(role="assistant", content=word + " "))
            )


def _tone(seconds: float, sample_rate: int, *, silent: bool = False) -> bytes:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    amplitude = 0 if silent else 8000
    return (np.sin(2 * np.pi * 220 * t) * amplitude).astype(np.int16).tobytes()


class FakeTTS(tts.TTS[Never]):
    """Speaks a tone, ``SECONDS_PER_CHAR`` per character of text."""

    def __init__(
        self,
        name: str,
        *,
        down: bool = False,
        sample_rate: int = 24_000,
        streaming: bool = True,
        delay_s: float = 0.0,
        silent: bool = False,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=streaming),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self._label = f"fake.{name}"
        self.name = name
        self.health = Switch(down)
        self.delay_s = delay_s
        self.silent = silent
        self.synthesized: list[str] = []  # synthesize() texts
        self.streams: list[list[str]] = []  # stream() calls: the text pieces each got
        self.conn_options: list[APIConnectOptions] = []

    @property
    def model(self) -> str:
        return f"{self.name}-model"

    @property
    def provider(self) -> str:
        return f"{self.name}-provider"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        self.synthesized.append(text)
        self.conn_options.append(conn_options)
        return _FakeChunked(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.SynthesizeStream:
        if not self.capabilities.streaming:
            return super().stream(conn_options=conn_options)
        self.streams.append([])
        self.conn_options.append(conn_options)
        return _FakeStream(tts=self, conn_options=conn_options, pieces=self.streams[-1])

    async def speak(self, emitter: tts.AudioEmitter, text: str) -> None:
        audio = _tone(len(text) * SECONDS_PER_CHAR, self.sample_rate, silent=self.silent)
        step = int(CHUNK_S * self.sample_rate) * 2
        for i in range(0, len(audio), step):
            emitter.push(audio[i : i + step])
            await asyncio.sleep(0)


class _FakeChunked(tts.ChunkedStream):
    def __init__(self, *, tts: FakeTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._fake = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        await asyncio.sleep(self._fake.delay_s)
        if self._fake.health.down:
            raise APIConnectionError(f"{self._fake.name} is down", retryable=False)
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._fake.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        await self._fake.speak(output_emitter, self._input_text)


class _FakeStream(tts.SynthesizeStream):
    def __init__(self, *, tts: FakeTTS, conn_options: APIConnectOptions, pieces: list[str]) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._fake = tts
        self._pieces = pieces

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._fake.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=utils.shortuuid())
        async for data in self._input_ch:
            if not isinstance(data, str) or not data:
                continue
            self._mark_started()  # the text reached the provider
            self._pieces.append(data)
            await asyncio.sleep(self._fake.delay_s)
            if self._fake.health.down:
                raise APIConnectionError(f"{self._fake.name} is down", retryable=False)
            await self._fake.speak(output_emitter, data)
        output_emitter.end_segment()


class FakeSTT(stt.STT):
    """Says ``heard by <name>`` for every ``utterance_s`` of audio it is given."""

    def __init__(self, name: str, *, down: bool = False, utterance_s: float = 0.3) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self._label = f"fake.{name}"
        self.name = name
        self.health = Switch(down)
        self.utterance_s = utterance_s
        self.streams = 0
        self.conn_options: list[APIConnectOptions] = []

    @property
    def model(self) -> str:
        return f"{self.name}-model"

    @property
    def provider(self) -> str:
        return f"{self.name}-provider"

    def _event(self) -> stt.SpeechEvent:
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(language="en", text=f"heard by {self.name}")],
        )

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        self.conn_options.append(conn_options)
        if self.health.down:
            raise APIConnectionError(f"{self.name} is down", retryable=False)
        return self._event()

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        self.streams += 1
        self.conn_options.append(conn_options)
        return _FakeRecognizeStream(self, conn_options)


class _FakeRecognizeStream(stt.RecognizeStream):
    def __init__(self, fake: FakeSTT, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=fake, conn_options=conn_options, sample_rate=NOT_GIVEN)
        self._fake = fake

    async def _run(self) -> None:
        heard = 0.0
        async for data in self._input_ch:
            if self._fake.health.down:
                raise APIConnectionError(f"{self._fake.name} is down", retryable=False)
            if isinstance(data, rtc.AudioFrame):
                heard += data.duration
                if heard >= self._fake.utterance_s:
                    heard = 0.0
                    self._event_ch.send_nowait(self._fake._event())


def speech(seconds: float, sample_rate: int = 16_000) -> list[rtc.AudioFrame]:
    """``seconds`` of a tone in 10 ms frames."""
    samples = int(sample_rate * 0.01)
    audio = np.frombuffer(_tone(seconds, sample_rate), dtype=np.int16)
    return [
        rtc.AudioFrame(audio[i : i + samples].tobytes(), sample_rate, 1, samples)
        for i in range(0, len(audio) - samples + 1, samples)
    ]
