"""A TTS chain that resumes a broken utterance on the next voice instead of dropping it.

LiveKit's ``tts.FallbackAdapter`` gives up on a segment once audio was pushed: the caller
hears half an answer and then silence. :class:`ResumingTTSAdapter` (still a
``tts.FallbackAdapter``) speaks an utterance sentence by sentence; it knows which sentences
were delivered whole, so when a voice fails (error, stall, silence) the next voice starts at
the first sentence not yet delivered and carries the rest of the utterance. The one
interrupted sentence is said again whole by the new voice: one short gap, no sentence lost
or repeated. Leading silence is held back until real audio arrives, so a voice that returns
only silence costs no dead air before the next one speaks. The voice change is logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from livekit import rtc
from livekit.agents import APIConnectOptions, APIError, tokenize, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS

from plugins.resilience.failures import EmptyResultError, ProviderUnavailableError
from plugins.resilience.guard_tts import SILENCE_PEAK

log = structlog.get_logger(__name__)


def _peak(frame: rtc.AudioFrame) -> int:
    data = np.frombuffer(frame.data, dtype=np.int16)
    return int(np.abs(data).max()) if data.size else 0


@dataclass(frozen=True)
class VoiceSwitch:
    """One mid-utterance voice change: who failed, who took over, at which sentence."""

    source: str
    target: str
    sentence: int
    gap_s: float  # last audible audio of the failed voice -> first of the new one
    error: str


class ResumingTTSAdapter(tts.FallbackAdapter):
    def __init__(
        self,
        tts_list: list[tts.TTS[Any]],
        *,
        sample_rate: int | None = None,
        silence_peak: int = SILENCE_PEAK,
        sentence_tokenizer: tokenize.SentenceTokenizer | None = None,
    ) -> None:
        super().__init__(tts_list, max_retry_per_tts=0, sample_rate=sample_rate)
        self.members: list[tts.TTS[Any]] = list(tts_list)
        self.silence_peak = silence_peak
        self.tokenizer = sentence_tokenizer or tokenize.basic.SentenceTokenizer()
        self.down: set[int] = set()
        self.switches: list[VoiceSwitch] = []  # every mid-utterance switch (bench, tests)
        self.delivered: list[tuple[str, str]] = []  # (voice label, sentence) spoken whole

    @property
    def capabilities(self) -> tts.TTSCapabilities:
        # streaming: text goes in as the LLM writes it and is spoken sentence by sentence;
        # no aligned transcript: a resumed utterance's word timings span two voices
        return tts.TTSCapabilities(streaming=True, aligned_transcript=False)

    def synthesize(  # type: ignore[override]  # a ChunkedStream, as the base TTS promises
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return ResumingChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(  # type: ignore[override]
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.SynthesizeStream:
        return ResumingSynthesizeStream(tts=self, conn_options=conn_options)

    def mark(self, index: int, available: bool) -> None:
        if (index not in self.down) == available:
            return
        if available:
            self.down.discard(index)
        else:
            self.down.add(index)
        self.emit(
            "tts_availability_changed",
            tts.AvailabilityChangedEvent(tts=self.members[index], available=available),
        )


class _Speaker:
    """Speaks sentences in order on the current voice, moving to the next one on failure."""

    def __init__(
        self, adapter: ResumingTTSAdapter, emitter: tts.AudioEmitter, conn: APIConnectOptions
    ) -> None:
        self.adapter = adapter
        self.emitter = emitter
        self.conn = dataclasses.replace(conn, max_retry=0)
        self.current = 0
        self.sentences = 0
        self.chars = 0
        self.last_audible = 0.0
        self._pending: tuple[int, int, str] | None = None  # (failed voice, sentence, error)

    async def speak(self, sentence: str) -> None:
        number = self.sentences
        self.sentences += 1
        first_error: BaseException | None = None
        members = self.adapter.members
        while self.current < len(members):
            index = self.current
            try:
                await self._speak_on(index, sentence)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                first_error = first_error or e
                if not isinstance(e, ProviderUnavailableError):
                    self.adapter.mark(index, False)
                if self._pending is None and (number > 0 or self.last_audible > 0):
                    self._pending = (index, number, str(e))
                self.current += 1
                continue
            self.adapter.mark(index, True)
            self.adapter.delivered.append((members[index].label, sentence))
            self.chars += len(sentence)
            return
        raise APIError(
            f"every TTS in the chain failed at sentence {number + 1}: {first_error}",
            retryable=False,
        ) from first_error

    async def _speak_on(self, index: int, sentence: str) -> None:
        member = self.adapter.members[index]
        resampler: rtc.AudioResampler | None = None
        if member.sample_rate != self.adapter.sample_rate:
            resampler = rtc.AudioResampler(
                input_rate=member.sample_rate,
                output_rate=self.adapter.sample_rate,
                num_channels=self.adapter.num_channels,
            )
        held: list[rtc.AudioFrame] = []
        audible = False
        async with member.synthesize(sentence, conn_options=self.conn) as stream:
            async for audio in stream:
                frames = resampler.push(audio.frame) if resampler else [audio.frame]
                for frame in frames:
                    if not audible and _peak(frame) > self.adapter.silence_peak:
                        audible = True
                        self._bridged(index)
                    if not audible:
                        held.append(frame)  # leading silence waits for real audio
                        continue
                    for h in held:
                        self.emitter.push_frame(h)
                    held.clear()
                    self.emitter.push_frame(frame)
                    self.last_audible = time.perf_counter()
            if resampler is not None:
                for frame in resampler.flush():
                    if audible:
                        self.emitter.push_frame(frame)
        if not audible:
            raise EmptyResultError(f"{member.label} returned no audible audio")

    def _bridged(self, index: int) -> None:
        if self._pending is None:
            return
        source, number, error = self._pending
        self._pending = None
        now = time.perf_counter()
        switch = VoiceSwitch(
            source=self.adapter.members[source].label,
            target=self.adapter.members[index].label,
            sentence=number,
            gap_s=now - self.last_audible if self.last_audible else 0.0,
            error=error,
        )
        self.adapter.switches.append(switch)
        log.warning(
            "TTS voice changed mid-utterance; resuming at the first unspoken sentence",
            source=switch.source,
            target=switch.target,
            sentence=number + 1,
            gap_ms=round(switch.gap_s * 1000),
            error=error,
        )


class ResumingChunkedStream(tts.ChunkedStream):
    _tts_attempt_span_name = None

    def __init__(
        self, *, tts: ResumingTTSAdapter, input_text: str, conn_options: APIConnectOptions
    ) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self.adapter = tts

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        async for _ in event_aiter:  # the members report their own metrics
            pass

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self.adapter.sample_rate,
            num_channels=self.adapter.num_channels,
            mime_type="audio/pcm",
        )
        speaker = _Speaker(self.adapter, output_emitter, self._conn_options)
        for sentence in self.adapter.tokenizer.tokenize(self.input_text):
            if sentence.strip():
                await speaker.speak(sentence)


class ResumingSynthesizeStream(tts.SynthesizeStream):
    _tts_attempt_span_name = None

    def __init__(self, *, tts: ResumingTTSAdapter, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self.adapter = tts

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        async for _ in event_aiter:
            pass

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self.adapter.sample_rate,
            num_channels=self.adapter.num_channels,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=utils.shortuuid())
        speaker = _Speaker(self.adapter, output_emitter, self._conn_options)
        words = self.adapter.tokenizer.stream()

        async def feed() -> None:
            async for data in self._input_ch:
                if isinstance(data, str):
                    words.push_text(data)
                else:
                    words.flush()
            words.end_input()

        feeder = asyncio.create_task(feed())
        try:
            async for sentence in _sentences(words):
                await speaker.speak(sentence)
            await feeder
        finally:
            await utils.aio.cancel_and_wait(feeder)
            await words.aclose()
        output_emitter.end_segment()


async def _sentences(words: tokenize.SentenceStream) -> AsyncIterator[str]:
    async for token in words:
        if token.token.strip():
            yield token.token
