"""``GuardedSTT``: any LiveKit STT behind the shared breaker, result deadlines and metering.

A recognize stream lives for a whole call and is silent while the caller is, so "no answer"
only means something once there is speech to answer, and is judged by the signs of life this
provider gives (interim results, or finals at its endpoints): see
:mod:`plugins.resilience.stall`. Non-streaming STTs (Whisper) are guarded per ``recognize``
call; the chain wraps the guard in LiveKit's ``StreamAdapter`` with the VAD.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Never

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectOptions, stt
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr
from livekit.agents.utils import AudioBuffer, aio

from plugins.resilience.failures import EmptyResultError
from plugins.resilience.guard import (
    UNIT_STT,
    Guard,
    GuardedPlugin,
    Pump,
    deadline_error,
)
from plugins.resilience.run_clock import run_time
from plugins.resilience.stall import StallWatch

#: RMS (int16) above which a frame counts as voiced; a line's hiss stays well below it.
VOICED_RMS = 300.0
#: How often a live stream's deadlines are checked while no event arrives.
_TICK_S = 0.05
_TICK: Any = object()
#: Extra time a batch recognize may take per second of audio.
BATCH_SECONDS_PER_AUDIO_SECOND = 0.25

TRANSCRIPT_EVENTS = (
    stt.SpeechEventType.INTERIM_TRANSCRIPT,
    stt.SpeechEventType.PREFLIGHT_TRANSCRIPT,
    stt.SpeechEventType.FINAL_TRANSCRIPT,
)


_RMS_KEY = "never_silent.rms"


def frame_rms(frame: rtc.AudioFrame) -> float:
    """The frame's RMS level, computed once per frame (the adapter and the guard both ask, 50
    times a second a call) and kept in its ``userdata``."""
    rms = frame.userdata.get(_RMS_KEY)
    if rms is None:
        data = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32)
        rms = frame.userdata[_RMS_KEY] = (
            float(np.sqrt(np.dot(data, data) / data.size)) if data.size else 0.0
        )
    return float(rms)


def _frames(buffer: AudioBuffer) -> list[rtc.AudioFrame]:
    return buffer if isinstance(buffer, list) else [buffer]


def _text(ev: stt.SpeechEvent) -> str:
    return ev.alternatives[0].text.strip() if ev.alternatives else ""


class GuardedSTT(GuardedPlugin, stt.STT[Never]):
    inner: stt.STT[Any]

    def __init__(self, inner: stt.STT[Any], guard: Guard) -> None:
        super().__init__(capabilities=inner.capabilities)
        self._wrap(inner, guard)

    @property
    def capabilities(self) -> stt.STTCapabilities:
        return self.inner.capabilities

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        guard = self.guard
        frames = _frames(buffer)
        audio_s = sum(f.duration for f in frames)
        voiced = any(frame_rms(f) > VOICED_RMS for f in frames)

        async def once() -> tuple[stt.SpeechEvent, float]:
            limit = guard.deadline.first_s + audio_s * BATCH_SECONDS_PER_AUDIO_SECOND
            started = run_time()
            try:
                try:
                    event = await asyncio.wait_for(
                        self.inner.recognize(
                            buffer,
                            language=language,
                            conn_options=dataclasses.replace(conn_options, max_retry=0),
                        ),
                        limit,
                    )
                except TimeoutError:
                    raise deadline_error(
                        guard.key,
                        stalled=False,
                        waited_s=run_time() - started,
                        limit_s=limit,
                    ) from None
                if voiced and not _text(event):
                    raise EmptyResultError(f"{guard.key} returned no transcript for speech")
            finally:
                guard.usage(UNIT_STT, audio_s)
            return event, run_time() - started

        # a batch answer reaches the caller whole, so nothing was delivered before a failure
        event, latency = await guard.run(once, delivered=lambda: False)
        guard.succeeded(latency)
        return event

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        if not self.inner.capabilities.streaming:
            return super().stream(language=language, conn_options=conn_options)
        return GuardedRecognizeStream(
            stt=self,
            language=language,
            conn_options=dataclasses.replace(conn_options, max_retry=0),
        )

    def prewarm(self) -> None:
        self.inner.prewarm()

    async def aclose(self) -> None:
        await self._close_inner()

    async def probe(self) -> float:
        """Recognize half a second of silence: proves the provider answers, costs nothing much."""
        sample_rate = 16000
        silence = rtc.AudioFrame(
            data=b"\x00\x00" * (sample_rate // 2),
            sample_rate=sample_rate,
            num_channels=1,
            samples_per_channel=sample_rate // 2,
        )
        deadline = self.guard.deadline.first_s
        options = APIConnectOptions(max_retry=0, timeout=max(deadline, 1.0))
        started = run_time()
        try:
            if not self.inner.capabilities.streaming:
                await asyncio.wait_for(
                    self.inner.recognize([silence], conn_options=options), deadline
                )
                return run_time() - started
            stream = self.inner.stream(conn_options=options)
            try:
                stream.push_frame(silence)
                stream.end_input()

                async def drain() -> None:
                    async for _ in stream:
                        pass

                await asyncio.wait_for(drain(), deadline)
            finally:
                await stream.aclose()
        except TimeoutError:
            raise deadline_error(
                self.guard.key,
                stalled=False,
                waited_s=run_time() - started,
                limit_s=deadline,
            ) from None
        return run_time() - started


class GuardedRecognizeStream(stt.RecognizeStream):
    def __init__(
        self,
        *,
        stt: GuardedSTT,
        language: NotGivenOr[str],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(stt=stt, conn_options=conn_options)
        self._guarded = stt
        self._language = language
        self._inner_conn_options = conn_options

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        async for _ in event_aiter:
            pass

    async def _run(self) -> None:
        guard = self._guarded.guard
        async with guard.attempt():
            inner = self._guarded.inner.stream(
                language=self._language, conn_options=self._inner_conn_options
            )
            inner.start_time_offset = self.start_time_offset
            watch = StallWatch(
                first_s=guard.deadline.first_s,
                # the provider's rhythm, learned by every stream of this guard
                interims=guard.deadline.gaps,
                endpoints=guard.deadline.endpoints,
                # learned from the stream, not from ``capabilities.interim_results``: LiveKit's
                # Google plugin declares interims but drops every one under its confidence
                # threshold, and Google sets a confidence only on finals
                expects_interims=False,
            )

            async def forward_input() -> None:
                async for data in self._input_ch:
                    if isinstance(data, rtc.AudioFrame):
                        watch.on_audio(
                            run_time(), data.duration, voiced=frame_rms(data) > VOICED_RMS
                        )
                        inner.push_frame(data)
                    else:
                        watch.on_flush(run_time())
                        inner.flush()
                watch.on_flush(run_time())
                inner.end_input()

            def overdue() -> Exception | None:
                verdict = watch.overdue(run_time())
                if verdict is None:
                    return None
                return deadline_error(
                    guard.key,
                    stalled=verdict.stalled,
                    waited_s=verdict.waited_s,
                    limit_s=verdict.limit_s,
                )

            input_task = asyncio.create_task(forward_input())
            pump: Pump[stt.SpeechEvent] = Pump(inner)
            try:
                while True:
                    try:
                        ev = await pump.next(_TICK_S)
                    except TimeoutError:
                        ev = _TICK
                    if ev is _TICK:
                        if (err := overdue()) is not None:
                            raise err from None
                        continue
                    if ev is None:
                        break
                    if ev.type in TRANSCRIPT_EVENTS and _text(ev):
                        now = run_time()
                        final = ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT
                        anchor = watch.waiting_since
                        watch.on_transcript(now, final=final)
                        if final:
                            guard.succeeded(None if anchor is None else now - anchor)
                    elif ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT:
                        if watch.flushed:
                            # an empty final for voiced audio: the provider heard nothing
                            raise EmptyResultError(
                                f"{guard.key} returned an empty transcript for speech"
                            )
                        # no words in what it heard (a cough, a noise): an answer all the same
                        watch.on_transcript(run_time(), final=True)
                    self._event_ch.send_nowait(ev)
                if watch.flushed:
                    raise EmptyResultError(f"{guard.key} ended without a transcript for speech")
            finally:
                await aio.cancel_and_wait(input_task)
                await pump.aclose()
                await inner.aclose()
                guard.usage(UNIT_STT, watch.audio_s)
