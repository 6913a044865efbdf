"""``STTFallbackAdapter``: LiveKit's ``stt.FallbackAdapter`` that keeps the caller's words.

A drop-in for ``livekit.agents.stt.FallbackAdapter``: same arguments with the same meaning
(non-streaming members are wrapped with ``vad`` exactly as LiveKit does), same state
(``_status``, ``_active_instance``; ``model``/``provider``/``metrics_metadata`` are LiveKit's
properties over it), same ``stt_availability_changed`` events, LiveKit's own background
recovery for members we do not guard (a live recognition stream fed the caller's audio until
it transcribes), and ``APIConnectionError`` when every member failed.

On top of it: when a stream fails, LiveKit's next member only hears the audio that comes
after the failure, so the caller's words up to it are lost. Ours keeps the audio of the
utterance in progress (everything since the last final transcript, at most
``max_replay_s``) and pushes it into the next member before the live audio, so the utterance
is transcribed whole. The guards' own deadlines decide when a stream counts as failed
(voiced audio and no transcript is a stall).

Where we differ from LiveKit, deliberately:

* a replacement stream's ``start_time_offset`` is the audio position of the first replayed
  frame, not the wall-clock time since the adapter's stream started (LiveKit), because its
  audio begins at the start of the utterance, before the failure;
* guarded members are tried on every request and recover through their probers (see
  :mod:`plugins.fallback.cursor`); LiveKit's recovery streams run for the others only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from livekit import rtc
from livekit.agents import APIConnectOptions, stt, utils
from livekit.agents import vad as lk_vad
from livekit.agents.stt.fallback_adapter import (
    DEFAULT_FALLBACK_API_CONNECT_OPTIONS,
    FallbackRecognizeStream,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from plugins.fallback.cursor import ChainCursor, TierSelector
from plugins.fallback.warm import Warmer
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


class STTFallbackAdapter(stt.FallbackAdapter):
    """``stt.FallbackAdapter`` that replays the current utterance to the next member.

    LiveKit's arguments first (``stt``, ``vad``, ``attempt_timeout``, ``max_retry_per_stt``,
    ``retry_interval``), then ours: ``max_replay_s``, ``keys`` (names in events),
    ``tiers``/``selector`` (ordering equal members).
    """

    def __init__(
        self,
        stt: list[stt.STT[Any]],
        *,
        vad: lk_vad.VAD | None = None,
        attempt_timeout: float = 10.0,
        max_retry_per_stt: int = 1,
        retry_interval: float = 5,
        max_replay_s: float = MAX_REPLAY_S,
        keys: Sequence[str] | None = None,
        tiers: Sequence[int] | None = None,
        selector: TierSelector | None = None,
    ) -> None:
        super().__init__(
            stt,
            vad=vad,
            attempt_timeout=attempt_timeout,
            max_retry_per_stt=max_retry_per_stt,
            retry_interval=retry_interval,
        )
        self.max_replay_s = max_replay_s
        self.switches: list[SttSwitch] = []
        self.chain = ChainCursor(
            "stt",
            self._stt_instances,
            self._status,
            announce=self._announce,
            keys=keys,
            tiers=tiers,
            selector=selector,
        )
        self.on("stt_availability_changed", self._availability_changed)
        #: warms the serving member at call start and the next one when one falters
        self.warmer = Warmer(self.chain)

    @property
    def members(self) -> list[stt.STT[Any]]:
        return list(self._stt_instances)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_FALLBACK_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return STTFallbackRecognizeStream(
            adapter=self, language=language, conn_options=conn_options
        )

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        """LiveKit's one-shot recognition, over the shared walk."""

        def recover(index: int) -> None:
            self._try_recovery(
                stt=self._stt_instances[index],
                buffer=buffer,
                language=language,
                conn_options=conn_options,
            )

        walk = self.chain.request(recover)
        for index in walk.order:
            member = self._stt_instances[index]
            try:
                event = await self._try_recognize(
                    stt=member, buffer=buffer, language=language, conn_options=conn_options
                )
            except Exception as e:  # logged inside _try_recognize
                walk.failed(index, e)
                continue
            self._active_instance = member
            walk.served(index)
            return event
        raise walk.error()

    def prewarm(self) -> None:
        """Warm the member that will serve (LiveKit: always member 0)."""
        self.warmer.prewarm()

    async def aclose(self) -> None:
        self.chain.close()
        self.warmer.close()
        await super().aclose()

    def _announce(self, member: stt.STT[Any], available: bool) -> None:
        self.emit(
            "stt_availability_changed",
            stt.AvailabilityChangedEvent(stt=member, available=available),
        )

    def _availability_changed(self, ev: stt.AvailabilityChangedEvent) -> None:
        self.chain.availability_changed(ev.stt, ev.available)


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


class STTFallbackRecognizeStream(FallbackRecognizeStream):
    """LiveKit's fallback recognition stream with the utterance replayed on a switch."""

    def __init__(
        self,
        *,
        adapter: STTFallbackAdapter,
        language: NotGivenOr[str],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(stt=adapter, language=language, conn_options=conn_options)
        self._adapter = adapter
        self._utterance = _Utterance(adapter.max_replay_s)
        self._active: stt.RecognizeStream | None = None
        self._input_done = False
        self._heard_s = 0.0  # audio pushed into this stream so far

    def _open(self, index: int) -> stt.RecognizeStream:
        adapter = self._adapter
        stream = adapter._stt_instances[index].stream(
            language=self._language,
            conn_options=dataclasses.replace(
                self._conn_options,
                max_retry=adapter._max_retry_per_stt,
                timeout=adapter._attempt_timeout,
                retry_interval=adapter._retry_interval,
            ),
        )
        # its audio starts where the replayed utterance started
        stream.start_time_offset = self.start_time_offset + max(
            0.0, self._heard_s - self._utterance.seconds
        )
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
            # LiveKit's recovery streams hear the live audio too
            for recovering in list(self._recovering_streams):
                with contextlib.suppress(Exception):
                    _pass_on(recovering, data)
            if isinstance(data, rtc.AudioFrame):
                self._heard_s += data.duration
                self._utterance.add(data)
            else:
                self._utterance.flushed = True
            self._to_active(data)
        self._input_done = True
        self._to_active(None)

    def _to_active(self, data: rtc.AudioFrame | object | None) -> None:
        if self._active is None:
            return
        # a stream that just failed refuses input; the replay on the next one carries it
        with contextlib.suppress(RuntimeError):
            _pass_on(self._active, data)

    async def _run(self) -> None:
        adapter = self._adapter
        members = adapter._stt_instances
        walk = adapter.chain.request(lambda i: self._try_recovery(members[i]))
        forwarder = asyncio.create_task(self._forward())
        pending: SttSwitch | None = None
        try:
            for index in walk.order:
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
                first = True
                try:
                    while (ev := await pump.next(None)) is not None:
                        if first:
                            first = False
                            adapter._active_instance = members[index]
                        if ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT and _has_text(ev):
                            walk.served(index)  # a recognition stream serves utterance by utterance
                            self._utterance.clear()
                            if pending is not None:
                                pending.recovered_s = time.perf_counter() - pending.failed_at
                                pending = None
                        self._event_ch.send_nowait(ev)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    walk.failed(index, e)
                    if pending is None:
                        pending = SttSwitch(
                            source=members[index].label,
                            target="",
                            replayed_s=0.0,
                            failed_at=time.perf_counter(),
                            error=str(e),
                        )
                        adapter.switches.append(pending)
                    continue
                finally:
                    self._active = None
                    await pump.aclose()
                    await stream.aclose()
                walk.served(index)
                return
            await asyncio.gather(
                *(s.aclose() for s in list(self._recovering_streams)), return_exceptions=True
            )
            raise walk.error()
        finally:
            await utils.aio.cancel_and_wait(forwarder)


def _pass_on(stream: stt.RecognizeStream, data: rtc.AudioFrame | object | None) -> None:
    """A frame, a flush (any other input item) or the end of input (``None``)."""
    if data is None:
        stream.end_input()
    elif isinstance(data, rtc.AudioFrame):
        stream.push_frame(data)
    else:
        stream.flush()


def _has_text(ev: stt.SpeechEvent) -> bool:
    return bool(ev.alternatives and ev.alternatives[0].text.strip())
