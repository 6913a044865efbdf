"""Recognise during the VAD's silence window, so the final transcript is ready when it closes.

LiveKit's ``stt.StreamAdapter`` turns a batch recogniser into a stream: it waits for the VAD's
END_OF_SPEECH (Silero's ``min_silence_duration``, 0.55 s of silence) and only then sends the
utterance to the recogniser, so the caller waits for the silence window *plus* the whole
recognition. Most of that window is dead time: once the caller has been silent for
``speculate_after_s`` (0.1 s by default) the words are known, only the turn's end is not.

:class:`SpeculativeStreamAdapter` is a ``StreamAdapter`` (same constructor, same events, same
``wrapped_stt``, ``model``, ``provider`` and metrics) whose stream starts recognising the
utterance so far as soon as the VAD's INFERENCE_DONE events show ``speculate_after_s`` of
silence inside speech. If the silence lasts, the FINAL_TRANSCRIPT is sent as soon as that
recognition returns, before the VAD's END_OF_SPEECH, as a streaming recogniser sends a final at
a pause; if the caller speaks again before it returns, the result is discarded and the utterance
is recognised again at the next pause. Audio already covered by a sent final is not sent again:
after a pause whose final was sent, the next final holds only the words spoken after it.

A discarded speculation is cancelled (the shared speech service then drops it if it has not
started it) but may still cost one extra recognition, so the chain uses this adapter only for
local recognisers (free to call again); a paid batch STT keeps LiveKit's plain adapter. Only the
public contract is used: ``VAD.stream()`` events (``raw_accumulated_silence``, ``frames``,
``speaking``) and ``STT.recognize()``; a VAD that does not report
``raw_accumulated_silence`` simply never triggers speculation, and the stream behaves like
LiveKit's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents import vad as lk_vad
from livekit.agents.stt.stream_adapter import DEFAULT_STREAM_ADAPTER_API_CONNECT_OPTIONS
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

log = structlog.get_logger(__name__)

#: Seconds of the VAD's silence before recognising. Silero reports silence only about 0.21 s
#: after the last voiced sample (its probability decays), so 0.1 starts about 0.31 s after it,
#: against 0.41 s at 0.2. Measured on 60 phone utterances: 0.1 starts 73 speculations of which
#: 13 are discarded (speech resumed), 0.2 starts 63 with 3 discarded; each discard costs one
#: local recognition (0.1-0.2 s of a core), while the caller is still talking.
DEFAULT_SPECULATE_AFTER_S = 0.1


class SpeculativeStreamAdapter(stt.StreamAdapter):
    """``stt.StreamAdapter`` that recognises at the start of a pause (see module docstring)."""

    def __init__(
        self,
        *,
        stt: stt.STT[Any],
        vad: lk_vad.VAD,
        speculate_after_s: float = DEFAULT_SPECULATE_AFTER_S,
    ) -> None:
        if not 0.0 < speculate_after_s <= 5.0:
            raise ValueError(
                f"speculate_after_s must be in (0, 5] seconds of silence, got {speculate_after_s}"
            )
        super().__init__(stt=stt, vad=vad)
        self.speculate_after_s = speculate_after_s
        self.stats = SpeculationStats()

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return SpeculativeStream(self, language=language, conn_options=conn_options)


@dataclass
class SpeculationStats:
    """How speculation went for one adapter (all its streams): for logs and benchmarks."""

    started: int = 0
    used: int = 0  # a final sent from a speculation
    discarded: int = 0  # the caller spoke again before the speculation was used
    at_end_of_speech: int = 0  # utterances recognised only at END_OF_SPEECH (no speculation)


@dataclass
class _Speculation:
    task: asyncio.Task[stt.SpeechEvent]
    silence_s: float  # the VAD's accumulated silence when it started
    end_sample: int  # utterance samples it covers


@dataclass
class _Utterance:
    frames: list[rtc.AudioFrame] = field(default_factory=list)
    samples: int = 0
    sent_upto: int = 0  # samples already covered by a final sent for this utterance
    speculation: _Speculation | None = None

    def add(self, frames: list[rtc.AudioFrame]) -> None:
        self.frames.extend(frames)
        self.samples += sum(f.samples_per_channel for f in frames)


class SpeculativeStream(stt.RecognizeStream):
    def __init__(
        self,
        adapter: SpeculativeStreamAdapter,
        *,
        language: NotGivenOr[str],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(stt=adapter, conn_options=DEFAULT_STREAM_ADAPTER_API_CONNECT_OPTIONS)
        self._adapter = adapter
        self._wrapped = adapter.wrapped_stt
        self._wrapped_conn_options = conn_options
        self._language = language
        self._stats = adapter.stats

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        async for _ in event_aiter:  # the wrapped STT's recognize() reports the metrics
            pass

    async def _run(self) -> None:
        vad_stream = self._adapter._vad.stream()

        async def forward_input() -> None:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    vad_stream.flush()
                else:
                    vad_stream.push_frame(item)
            vad_stream.end_input()

        tasks = [
            asyncio.create_task(forward_input(), name="speculative_forward_input"),
            asyncio.create_task(self._recognize(vad_stream), name="speculative_recognize"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            await utils.aio.cancel_and_wait(*tasks)
            await vad_stream.aclose()

    async def _recognize(self, vad_stream: lk_vad.VADStream) -> None:
        utterance: _Utterance | None = None
        pending: set[asyncio.Task[None]] = set()
        try:
            async for event in vad_stream:
                if event.type == lk_vad.VADEventType.START_OF_SPEECH:
                    utterance = _Utterance()
                    utterance.add(event.frames)  # the VAD's buffer: padding + speech so far
                    self._event_ch.send_nowait(stt.SpeechEvent(stt.SpeechEventType.START_OF_SPEECH))
                elif event.type == lk_vad.VADEventType.INFERENCE_DONE:
                    if utterance is not None and event.speaking:
                        utterance.add(event.frames)
                        self._on_inference(utterance, event, pending)
                elif event.type == lk_vad.VADEventType.END_OF_SPEECH:
                    speech_end_time = (
                        time.time() - event.silence_duration - event.inference_duration
                    )
                    self._event_ch.send_nowait(
                        stt.SpeechEvent(
                            stt.SpeechEventType.END_OF_SPEECH, speech_end_time=speech_end_time
                        )
                    )
                    current, utterance = utterance, None
                    await self._finish(current, event, speech_end_time)
        finally:
            for task in pending:
                task.cancel()
            if utterance is not None and utterance.speculation is not None:
                utterance.speculation.task.add_done_callback(_retrieve)

    def _on_inference(
        self, utterance: _Utterance, event: lk_vad.VADEvent, pending: set[asyncio.Task[None]]
    ) -> None:
        silence = event.raw_accumulated_silence
        spec = utterance.speculation
        if spec is not None and silence < spec.silence_s:
            # the caller spoke again: this pause was not the end of anything
            utterance.speculation = None
            if utterance.sent_upto < spec.end_sample:  # not used (a used one sent its final)
                self._stats.discarded += 1
                spec.task.cancel()  # a recogniser that can withdraw a queued request does
            spec.task.add_done_callback(_retrieve)
            return
        if spec is None and silence >= self._adapter.speculate_after_s:
            if utterance.samples <= utterance.sent_upto:
                return
            task = asyncio.create_task(self._recognize_range(utterance, utterance.samples))
            spec = utterance.speculation = _Speculation(task, silence, utterance.samples)
            self._stats.started += 1
            sender = asyncio.create_task(self._send_when_ready(utterance, spec))
            pending.add(sender)
            sender.add_done_callback(pending.discard)

    async def _send_when_ready(self, utterance: _Utterance, spec: _Speculation) -> None:
        """Send the speculation's final once it returns, unless the caller spoke meanwhile."""
        try:
            result = await asyncio.shield(spec.task)
        except Exception:
            return  # raised again at END_OF_SPEECH, where a failure belongs
        if utterance.speculation is not spec:
            return  # discarded: speech resumed before the recognition returned
        self._stats.used += 1
        utterance.sent_upto = max(utterance.sent_upto, spec.end_sample)
        self._send_final(result, speech_end_time=None)

    async def _finish(
        self, utterance: _Utterance | None, event: lk_vad.VADEvent, speech_end_time: float
    ) -> None:
        if utterance is None:  # END_OF_SPEECH without a START_OF_SPEECH seen: as LiveKit does
            utterance = _Utterance()
            utterance.add(event.frames)
        spec, utterance.speculation = utterance.speculation, None  # its sender stands down
        if spec is not None:
            if not spec.task.done():
                # still running: it covers all of the speech; wait for it rather than start over
                await asyncio.wait([spec.task])
            result = spec.task.result()  # a failed recogniser raises here, as LiveKit's would
            if utterance.sent_upto < spec.end_sample:  # its sender has not sent it yet
                utterance.sent_upto = spec.end_sample
                self._stats.used += 1
                self._send_final(result, speech_end_time=speech_end_time)
            return
        if utterance.sent_upto >= utterance.samples:
            return
        if utterance.sent_upto == 0:  # never speculated: exactly what LiveKit's adapter sends
            self._stats.at_end_of_speech += 1
            result = await self._wrapped.recognize(
                buffer=utils.merge_frames(event.frames),
                language=self._language,
                conn_options=self._wrapped_conn_options,
            )
        else:
            result = await self._recognize_range(utterance, utterance.samples)
        self._send_final(result, speech_end_time=speech_end_time)

    async def _recognize_range(self, utterance: _Utterance, end: int) -> stt.SpeechEvent:
        """Recognise the utterance from where the last sent final ended to ``end`` samples (the
        audio in between starts with the silence that ended that final)."""
        merged = utils.merge_frames(list(utterance.frames))
        channels = merged.num_channels
        samples = np.frombuffer(merged.data, dtype=np.int16)
        part = samples[utterance.sent_upto * channels : end * channels]
        frame = rtc.AudioFrame(part.tobytes(), merged.sample_rate, channels, part.size // channels)
        return await self._wrapped.recognize(
            buffer=frame, language=self._language, conn_options=self._wrapped_conn_options
        )

    def _send_final(self, result: stt.SpeechEvent, *, speech_end_time: float | None) -> None:
        if not result.alternatives or not result.alternatives[0].text:
            return
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                alternatives=[result.alternatives[0]],
                speech_end_time=result.speech_end_time
                if result.speech_end_time is not None
                else speech_end_time,
            )
        )


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A discarded speculation's outcome is not wanted; read it so asyncio does not warn."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
