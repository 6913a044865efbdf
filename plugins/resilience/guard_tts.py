"""``GuardedTTS``: any LiveKit TTS behind the shared breaker, a first-audio deadline and metering.

Both paths are guarded: ``synthesize`` (one text, chunked) and ``stream`` (text pushed as the
LLM writes it). For a stream the first-audio clock starts when there is something to speak (a
whole sentence - its end and the start of the next - a flush, or the end of input), not when
the first token arrives, so a slow LLM is never blamed on the TTS. Audio that is all silence counts as an empty result; audio that cannot be speech
(:mod:`plugins.resilience.speech_check`: noise, clipping, bytes read as samples) as an error
inside the answer, and its first window is held back until judged, so the caller never hears
it; an answer that ends with far less audio than its text needs as a cut. All three raise
classified failures the chain resumes from on the next voice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable, Callable
from typing import Any, Never

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents import APIConnectOptions, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, USERDATA_TIMED_TRANSCRIPT

from plugins.resilience.failures import (
    ClassifiedError,
    EmptyResultError,
    ImplausibleAudioError,
    TruncatedError,
)
from plugins.resilience.guard import UNIT_TTS, Guard, GuardedPlugin, Pump, deadline_error
from plugins.resilience.run_clock import run_time
from plugins.resilience.speech_check import SpeechCheck, implausible, min_speech_s, spoken_chars

#: Peak amplitude (int16) below which synthesized audio counts as silence.
SILENCE_PEAK = 64
#: A sentence has been written: its end, then the next one begins (what a TTS plugin's sentence
#: tokenizer waits for before it speaks the sentence).
_SENTENCE_WRITTEN = re.compile(r"[.!?][\"')\]]*\s+\S")


def _samples(frame: rtc.AudioFrame) -> npt.NDArray[np.int16]:
    return np.frombuffer(frame.data, dtype=np.int16)


def _peak(frame: rtc.AudioFrame) -> int:
    data = _samples(frame)
    return int(np.abs(data).max()) if data.size else 0


class GuardedTTS(GuardedPlugin, tts.TTS[Never]):
    inner: tts.TTS[Any]

    def __init__(self, inner: tts.TTS[Any], guard: Guard, *, probe_text: str = "OK.") -> None:
        super().__init__(
            capabilities=inner.capabilities,
            sample_rate=inner.sample_rate,
            num_channels=inner.num_channels,
        )
        self._wrap(inner, guard)
        self.probe_text = probe_text

    @property
    def markup(self) -> tts.TTS.Markup:
        return self.inner.markup

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return GuardedChunkedStream(
            tts=self, input_text=text, conn_options=dataclasses.replace(conn_options, max_retry=0)
        )

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.SynthesizeStream:
        if not self.inner.capabilities.streaming:
            return super().stream(conn_options=conn_options)
        return GuardedSynthesizeStream(
            tts=self, conn_options=dataclasses.replace(conn_options, max_retry=0)
        )

    def prewarm(self) -> None:
        self.inner.prewarm()

    async def aclose(self) -> None:
        await self._close_inner()

    async def probe(self) -> float:
        """Synthesize one short word; returns time to first audio."""
        started = run_time()
        deadline = self.guard.deadline.first_s
        stream = self.inner.synthesize(
            self.probe_text, conn_options=APIConnectOptions(max_retry=0, timeout=max(deadline, 1.0))
        )
        pump: Pump[tts.SynthesizedAudio] = Pump(stream)
        try:
            while True:
                try:
                    audio = await pump.next(deadline - (run_time() - started))
                except TimeoutError:
                    raise deadline_error(
                        self.guard.key,
                        stalled=False,
                        waited_s=run_time() - started,
                        limit_s=deadline,
                    ) from None
                if audio is None:
                    raise EmptyResultError(f"{self.guard.key} answered the probe with no audio")
                if _peak(audio.frame) > SILENCE_PEAK:
                    if reason := implausible(_samples(audio.frame)):
                        raise ImplausibleAudioError(f"{self.guard.key} probe: {reason}")
                    return run_time() - started
        finally:
            await pump.aclose()
            await stream.aclose()

    async def attempt(
        self, once: Callable[[], Awaitable[float | None]], *, heard: Callable[[], bool]
    ) -> None:
        """One guarded request of either stream kind: ``once`` under :meth:`Guard.run`, its
        first-audio latency recorded on success. A connection that had carried audio and was
        lost is re-dialled at once (a refused one is not), so the next sentence does not pay
        the handshake; ``heard()`` says whether any audio came."""
        try:
            latency = await self.guard.run(once, delivered=heard)
        except ClassifiedError as e:
            if heard():
                self.rewarm(e)
            raise
        self.guard.succeeded(latency)


class _AudioWatch:
    """First-audio / stall bookkeeping shared by both stream kinds."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.first_s = guard.deadline.first_s
        self.armed_at: float | None = None  # when there was something to speak
        self.first_audio: float | None = None
        self.last_audio = 0.0
        self.last_input = 0.0  # when text (or the end of it) was last given
        self.audible = False
        self.input_done = False
        self.speech = SpeechCheck()

    @property
    def stall_s(self) -> float:
        """The provider's own stall deadline, learned from its gaps (this stream's too)."""
        return self.guard.deadline.stall_s

    def timeout(self) -> float | None:
        now = run_time()
        if self.first_audio is None:
            if self.armed_at is None:
                return 0.05  # nothing to speak yet: look again soon
            return self.first_s - (now - self.armed_at)
        if not self.input_done:
            return None if self.armed_at is None else 0.25
        return self.stall_s - (now - self.quiet_since)

    @property
    def quiet_since(self) -> float:
        """Where the current gap is measured from: the last audio, or text given after it."""
        return max(self.last_audio, self.last_input)

    def given(self) -> None:
        """Text, a flush or the end of input was handed to the plugin just now."""
        self.last_input = run_time()

    def expired(self) -> bool:
        now = run_time()
        if self.first_audio is None:
            return self.armed_at is not None and now - self.armed_at >= self.first_s
        return self.input_done and now - self.quiet_since >= self.stall_s

    def error(self) -> Exception:
        now = run_time()
        if self.first_audio is None:
            assert self.armed_at is not None
            return deadline_error(
                self.guard.key, stalled=False, waited_s=now - self.armed_at, limit_s=self.first_s
            )
        return deadline_error(
            self.guard.key, stalled=True, waited_s=now - self.quiet_since, limit_s=self.stall_s
        )

    def saw(self, frame: rtc.AudioFrame) -> None:
        """Account for one frame; raises :class:`ImplausibleAudioError` on a bad window."""
        now = run_time()
        if self.first_audio is not None and self.input_done:
            # the gaps the stall deadline judges: once all the text was given
            self.guard.deadline.observe_gap(now - self.quiet_since)
        self.last_audio = now
        if self.first_audio is None:
            self.first_audio = self.last_audio
            if self.armed_at is None:  # spoken before a sentence was complete: no lateness
                self.armed_at = now
        if not self.audible and _peak(frame) > SILENCE_PEAK:
            self.audible = True
        reason = self.speech.feed(_samples(frame), frame.sample_rate, frame.num_channels)
        self._raise_if(reason)

    def ended(self) -> None:
        self._raise_if(self.speech.finish())

    def _raise_if(self, reason: str | None) -> None:
        if reason is not None:
            raise ImplausibleAudioError(f"{self.guard.key} sent audio that is not speech: {reason}")

    def check_length(self, spoken: int) -> None:
        """Raise :class:`TruncatedError` when the audio is far shorter than ``spoken`` needs."""
        needed = min_speech_s(spoken)
        if self.audible and self.speech.seconds < needed:
            raise TruncatedError(
                f"{self.guard.key} ended after {self.speech.seconds:.2f}s of audio for "
                f"{spoken} characters (speech takes at least {needed:.2f}s)"
            )

    @property
    def latency(self) -> float | None:
        if self.first_audio is None or self.armed_at is None:
            return None
        return self.first_audio - self.armed_at


async def _read_audio(
    pump: Pump[tts.SynthesizedAudio],
    watch: _AudioWatch,
    output_emitter: tts.AudioEmitter,
) -> None:
    """Forward the plugin's audio; the first window is held back until it is judged speech."""
    held: list[tts.SynthesizedAudio] = []

    def emit(audio: tts.SynthesizedAudio) -> None:
        if texts := audio.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT):
            output_emitter.push_timed_transcript(texts)
        output_emitter.push_frame(audio.frame)

    while True:
        timeout = watch.timeout()
        try:
            audio = await pump.next(timeout)
        except TimeoutError:
            if watch.expired():
                raise watch.error() from None
            continue
        if audio is None:
            watch.ended()
            for early in held:
                emit(early)
            return
        watch.saw(audio.frame)
        if watch.speech.windows_judged == 0:
            held.append(audio)
            continue
        for early in held:
            emit(early)
        held.clear()
        emit(audio)


class GuardedChunkedStream(tts.ChunkedStream):
    _tts_attempt_span_name = None

    def __init__(
        self, *, tts: GuardedTTS, input_text: str, conn_options: APIConnectOptions
    ) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._guarded = tts
        self._inner_conn_options = conn_options

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        async for _ in event_aiter:
            pass

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        guard = self._guarded.guard
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._guarded.sample_rate,
            num_channels=self._guarded.num_channels,
            mime_type="audio/pcm",
        )
        heard = False  # any audio from the plugin, even held back: a retry could repeat it

        async def once() -> float | None:
            nonlocal heard
            watch = _AudioWatch(guard)
            watch.armed_at = run_time()
            watch.input_done = True
            inner = self._guarded.inner.synthesize(
                self.input_text, conn_options=self._inner_conn_options
            )
            pump: Pump[tts.SynthesizedAudio] = Pump(inner)
            try:
                await _read_audio(pump, watch, output_emitter)
                if self.input_text.strip() and not watch.audible:
                    raise EmptyResultError(f"{guard.key} returned no audible audio")
                watch.check_length(spoken_chars(self.input_text))
            finally:
                heard = heard or watch.first_audio is not None
                await pump.aclose()
                await inner.aclose()
                if watch.first_audio is not None:  # a refused request (402, 429...) is not billed
                    guard.usage(UNIT_TTS, float(len(self.input_text)))
            return watch.latency

        await self._guarded.attempt(once, heard=lambda: heard)


class GuardedSynthesizeStream(tts.SynthesizeStream):
    _tts_attempt_span_name = None

    def __init__(self, *, tts: GuardedTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._guarded = tts
        self._inner_conn_options = conn_options

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        async for _ in event_aiter:
            pass

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        guard = self._guarded.guard
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._guarded.sample_rate,
            num_channels=self._guarded.num_channels,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=utils.shortuuid())
        # what the caller's side pushed so far (None: a flush), so a retry says it all again
        given: list[str | None] = []
        ended = False
        heard = False  # any audio from the plugin, even held back: a retry could repeat it

        async def once() -> float | None:
            nonlocal heard
            watch = _AudioWatch(guard)
            inner = self._guarded.inner.stream(conn_options=self._inner_conn_options)
            chars = 0
            spoken = 0
            tail = ""  # the end of the text given so far: where a sentence may be ending

            def push(data: str | None) -> None:
                nonlocal chars, spoken, tail
                watch.given()
                if data is not None:
                    chars += len(data)
                    spoken += spoken_chars(data)
                    inner.push_text(data)
                    if watch.armed_at is None:
                        tail = (tail + data)[-64:]
                        if _SENTENCE_WRITTEN.search(tail):
                            watch.armed_at = run_time()
                else:
                    inner.flush()
                    if chars and watch.armed_at is None:
                        watch.armed_at = run_time()

            async def forward_input() -> None:
                nonlocal ended
                for data in given:
                    push(data)
                if not ended:
                    async for item in self._input_ch:
                        data = item if isinstance(item, str) else None
                        given.append(data)
                        push(data)
                    ended = True
                inner.end_input()
                watch.input_done = True
                watch.given()
                if watch.armed_at is None and chars:
                    watch.armed_at = run_time()

            input_task = asyncio.create_task(forward_input())
            pump: Pump[tts.SynthesizedAudio] = Pump(inner)
            try:
                await _read_audio(pump, watch, output_emitter)
                if input_task.done() and (exc := input_task.exception()) is not None:
                    raise exc
                if chars and not watch.audible:
                    raise EmptyResultError(f"{guard.key} returned no audible audio")
                watch.check_length(spoken)
            finally:
                heard = heard or watch.first_audio is not None
                await utils.aio.cancel_and_wait(input_task)
                await pump.aclose()
                await inner.aclose()
                if watch.first_audio is not None:  # a refused request (402, 429...) is not billed
                    guard.usage(UNIT_TTS, float(chars))
            return watch.latency

        await self._guarded.attempt(once, heard=lambda: heard)
