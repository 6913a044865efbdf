"""A LiveKit TTS over a blocking, in-process speech engine.

The local voices (hibari, eSpeak NG) are synchronous libraries that turn one piece of text into
int16 PCM. This module gives them LiveKit's real TTS interface: ``synthesize()`` and a genuinely
streaming ``stream()`` that synthesizes sentence by sentence (LiveKit's own sentence tokenizer)
so the caller hears the first sentence while the LLM is still writing the rest. Every engine
call runs in a worker thread, so the event loop never blocks on inference.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Never, Protocol

import structlog
from livekit.agents import APIError, tokenize, tts, utils
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

from plugins.local.audio import Int16Array, silence

log = structlog.get_logger(__name__)

# What a caller hears for text with nothing pronounceable in it ("...", an emoji): a short pause
# instead of LiveKit's "no audio frames" error, which would take the floor of the chain offline.
UNSPEAKABLE_PAUSE_S = 0.1


class SpeechEngine(Protocol):
    """What an engine must offer; loaded once per process, callable from any thread."""

    @property
    def sample_rate(self) -> int: ...

    def synthesize(self, text: str) -> Int16Array: ...


class EngineTTS(tts.TTS[Never]):
    """Base for a local voice; subclasses name themselves and say how to load their engine."""

    def __init__(
        self,
        *,
        load_engine: Callable[[], SpeechEngine],
        sample_rate: int,
        label: str,
        provider: str,
        model: str,
        sentence_tokenizer: NotGivenOr[tokenize.SentenceTokenizer] = NOT_GIVEN,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=False),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self._load_engine = load_engine
        self._name = label
        self._provider_name = provider
        self._model_name = model
        self._sentences: tokenize.SentenceTokenizer = (
            sentence_tokenizer
            if utils.is_given(sentence_tokenizer)
            else tokenize.blingfire.SentenceTokenizer()
        )

    @property
    def label(self) -> str:
        return self._name

    @property
    def provider(self) -> str:
        return self._provider_name

    @property
    def model(self) -> str:
        return self._model_name

    def prewarm(self) -> None:
        """Start loading the engine in the background; LiveKit calls this on the event loop."""
        threading.Thread(
            target=self._load_engine, name=f"{self._name}-prewarm", daemon=True
        ).start()

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> EngineChunkedStream:
        _require_text(text)
        return EngineChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> EngineSynthesizeStream:
        return EngineSynthesizeStream(tts=self, conn_options=conn_options)

    def split_sentences(self, text: str) -> list[str]:
        return [s for s in self._sentences.tokenize(text) if s.strip()]

    def sentence_stream(self) -> tokenize.SentenceStream:
        return self._sentences.stream()

    async def synthesize_sentence(self, text: str) -> Int16Array:
        """One sentence -> PCM, off the event loop; engine failures become LiveKit APIErrors."""

        def run() -> Int16Array:
            return self._load_engine().synthesize(text)

        try:
            pcm = await asyncio.to_thread(run)
        except (TypeError, ValueError):
            raise
        except Exception as e:
            raise APIError(f"{self._name}: the local engine failed: {e}", retryable=False) from e
        if pcm.size == 0:
            log.debug("tts.unspeakable_text", provider=self._name, chars=len(text))
            return silence(UNSPEAKABLE_PAUSE_S, self.sample_rate)
        return pcm


def _require_text(text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text to synthesize must be a str, got {type(text).__name__}")


class EngineChunkedStream(tts.ChunkedStream):
    """Whole text in, audio out sentence by sentence (the first sentence plays early)."""

    def __init__(self, *, tts: EngineTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._engine_tts = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._engine_tts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        for sentence in self._engine_tts.split_sentences(self.input_text):
            pcm = await self._engine_tts.synthesize_sentence(sentence.strip())
            output_emitter.push(pcm.tobytes())
        output_emitter.flush()


class EngineSynthesizeStream(tts.SynthesizeStream):
    """Text pushed token by token; each sentence is voiced as soon as the tokenizer closes it."""

    def __init__(self, *, tts: EngineTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._engine_tts = tts

    def push_text(self, token: str) -> None:
        _require_text(token)
        super().push_text(token)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._engine_tts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=utils.shortuuid())
        sentences = self._engine_tts.sentence_stream()

        async def forward_input() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    sentences.flush()
                else:
                    sentences.push_text(data)
            sentences.end_input()

        async def voice_sentences() -> None:
            async for ev in sentences:
                text = ev.token.strip()
                if not text:
                    continue
                self._mark_started()
                pcm = await self._engine_tts.synthesize_sentence(text)
                output_emitter.push(pcm.tobytes())
                output_emitter.flush()

        tasks = [
            asyncio.create_task(forward_input(), name="EngineSynthesizeStream.forward_input"),
            asyncio.create_task(voice_sentences(), name="EngineSynthesizeStream.voice"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            await sentences.aclose()
            await utils.aio.cancel_and_wait(*tasks)
