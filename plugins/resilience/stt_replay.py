"""An STT chain that replays the caller's current utterance to the next recogniser.

LiveKit's ``stt.FallbackAdapter`` moves to the next recogniser when a stream fails, but the
audio already pushed into the dead stream is gone: the caller's words up to the failure are
never transcribed. :class:`ReplaySTTAdapter` (still an ``stt.FallbackAdapter``) keeps the
audio of the utterance in progress (everything since the last final transcript, bounded) and,
when a stream fails or stalls (the guards turn "voiced audio, no transcript" into a stall),
pushes that audio into the next recogniser before the live audio, so the utterance is
transcribed whole. The guards' own deadlines decide when a stream counts as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog
from livekit import rtc
from livekit.agents import APIConnectOptions, APIError, stt, utils
from livekit.agents import vad as lk_vad
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from plugins.resilience.failures import ProviderUnavailableError
from plugins.resilience.guard import Pump

log = structlog.get_logger(__name__)

#: Longest utterance kept for replay; older audio is dropped first.
MAX_REPLAY_S = 30.0


@dataclass
class SttSwitch:
    source: str
    target: str
    replayed_s: float  # seconds of buffered audio replayed into the new recogniser
    failed_at: float  # perf_counter when the old stream failed
    recovered_s: float | None = None  # failure -> the replayed utterance's final transcript
    error: str = ""


class ReplaySTTAdapter(stt.FallbackAdapter):
    def __init__(
        self,
        stt_list: list[stt.STT[Any]],
        *,
        vad: lk_vad.VAD | None = None,
        max_replay_s: float = MAX_REPLAY_S,
    ) -> None:
        super().__init__(stt_list, vad=vad, max_retry_per_stt=0)
        self.members: list[stt.STT[Any]] = list(stt_list)
        self.max_replay_s = max_replay_s
        self.down: set[int] = set()
        self.switches: list[SttSwitch] = []

    def stream(  # type: ignore[override]  # a RecognizeStream, as the base STT promises
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return ReplayRecognizeStream(adapter=self, language=language, conn_options=conn_options)

    def mark(self, index: int, available: bool) -> None:
        if (index not in self.down) == available:
            return
        if available:
            self.down.discard(index)
        else:
            self.down.add(index)
        self.emit(
            "stt_availability_changed",
            stt.AvailabilityChangedEvent(stt=self.members[index], available=available),
        )


class _Utterance:
    """Audio since the last final transcript, at most ``max_s`` of it."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.frames: deque[rtc.AudioFrame] = deque()
        self.seconds = 0.0
        self.flushed = False  # a flush came after the buffered audio

    def add(self, frame: rtc.AudioFrame) -> None:
        self.frames.append(frame)
        self.seconds += frame.duration
        self.flushed = False
        while self.seconds > self.max_s and len(self.frames) > 1:
            self.seconds -= self.frames.popleft().duration

    def clear(self) -> None:
        self.frames.clear()
        self.seconds = 0.0
        self.flushed = False


class ReplayRecognizeStream(stt.RecognizeStream):
    def __init__(
        self,
        *,
        adapter: ReplaySTTAdapter,
        language: NotGivenOr[str],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(stt=adapter, conn_options=conn_options, sample_rate=NOT_GIVEN)
        self.adapter = adapter
        self._language = language
        self._utterance = _Utterance(adapter.max_replay_s)
        self._active: stt.RecognizeStream | None = None
        self._input_done = False

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        async for _ in event_aiter:  # the members report their own metrics
            pass

    def _open(self, index: int) -> stt.RecognizeStream:
        stream = self.adapter.members[index].stream(
            language=self._language,
            conn_options=dataclasses.replace(self._conn_options, max_retry=0),
        )
        stream.start_time_offset = self.start_time_offset
        # the utterance so far goes in first, then the live audio follows (same task: no gap)
        for frame in self._utterance.frames:
            stream.push_frame(frame)
        if self._utterance.flushed:
            stream.flush()
        if self._input_done:
            stream.end_input()
        self._active = stream
        return stream

    async def _forward(self) -> None:
        async for data in self._input_ch:
            if isinstance(data, rtc.AudioFrame):
                self._utterance.add(data)
                if self._active is not None:
                    self._push(lambda s, f=data: s.push_frame(f))
            else:
                self._utterance.flushed = True
                if self._active is not None:
                    self._push(lambda s: s.flush())
        self._input_done = True
        if self._active is not None:
            self._push(lambda s: s.end_input())

    def _push(self, action: Any) -> None:
        # a stream that just failed refuses input; the replay on the next one carries it
        with contextlib.suppress(RuntimeError):
            action(self._active)

    async def _run(self) -> None:
        members = self.adapter.members
        forwarder = asyncio.create_task(self._forward())
        first_error: BaseException | None = None
        pending: SttSwitch | None = None
        index = 0
        try:
            while index < len(members):
                stream = self._open(index)
                replayed = self._utterance.seconds
                if pending is not None:
                    pending.target = members[index].label
                    pending.replayed_s = replayed
                    log.warning(
                        "STT failed; replaying the caller's current utterance to the next one",
                        source=pending.source,
                        target=pending.target,
                        replayed_s=round(replayed, 2),
                        error=pending.error,
                    )
                pump: Pump[stt.SpeechEvent] = Pump(stream)
                try:
                    while (ev := await pump.next(None)) is not None:
                        if ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT and _has_text(ev):
                            self._utterance.clear()
                            if pending is not None:
                                pending.recovered_s = time.perf_counter() - pending.failed_at
                                pending = None
                        self._event_ch.send_nowait(ev)
                    self.adapter.mark(index, True)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    first_error = first_error or e
                    if not isinstance(e, ProviderUnavailableError):
                        self.adapter.mark(index, False)
                    if pending is None:
                        pending = SttSwitch(
                            source=members[index].label,
                            target="",
                            replayed_s=0.0,
                            failed_at=time.perf_counter(),
                            error=str(e),
                        )
                        self.adapter.switches.append(pending)
                    index += 1
                finally:
                    self._active = None
                    await pump.aclose()
                    await stream.aclose()
            raise APIError(f"every STT in the chain failed: {first_error}", retryable=False)
        finally:
            await utils.aio.cancel_and_wait(forwarder)


def _has_text(ev: stt.SpeechEvent) -> bool:
    return bool(ev.alternatives and ev.alternatives[0].text.strip())
