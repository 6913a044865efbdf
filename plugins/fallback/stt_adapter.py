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

A stall verdict must be sure, so it waits for the provider's own window, and the caller, who
has stopped talking, waits through it. With ``hedge`` (``build_chains`` hedges onto local
members) the next member starts on the buffered utterance *alongside* a recogniser that is
silent for longer than it usually is (:class:`~plugins.resilience.stall.HedgeWatch`, from its
learned rhythm). If the late one shows life again (any transcript) the hedge is dropped: it
is alive, and a local floor that endpoints sooner must not take its utterance. Otherwise the
hedge's final is the one the caller gets, and the late one's own transcript of the same
words is dropped when it comes (never two transcripts of the same words). A hedge that won
is closed and the member that was late keeps serving (it was late, not failed: its guard's
stall verdict decides that); when it does fail, the hedge already running becomes the next
member's stream, without a second replay.

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
from collections.abc import Callable, Sequence
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
from plugins.resilience.guard import get_within
from plugins.resilience.guard_stt import TRANSCRIPT_EVENTS, VOICED_RMS, frame_rms
from plugins.resilience.run_clock import run_time
from plugins.resilience.stall import HedgeWatch

log = structlog.get_logger(__name__)

#: Longest utterance kept for replay; older audio is dropped first.
MAX_REPLAY_S = 30.0
#: How often a hedge's condition is checked while no event arrives.
_TICK_S = 0.05

#: ``hedge(serving, next)``: how to judge whether ``serving`` is late enough that ``next``
#: should start on the utterance alongside it, or ``None`` for no hedging between these two.
HedgeFor = Callable[[stt.STT[Any], stt.STT[Any]], HedgeWatch | None]


@dataclass
class SttSwitch:
    source: str
    target: str
    replayed_s: float  # seconds of buffered audio replayed into the new recogniser
    failed_at: float  # perf_counter when the old stream failed
    recovered_s: float | None = None  # failure -> the replayed utterance's final transcript
    error: str = ""


@dataclass
class SttHedge:
    """The next member started on an utterance alongside a late one (``hedge``)."""

    source: str  # the member that was late
    target: str  # the member started alongside it
    why: str
    replayed_s: float
    started_at: float  # perf_counter
    winner: str = ""  # whose final the caller got ("" while undecided, or neither)
    won_s: float | None = None  # hedge start -> the winning final


class STTFallbackAdapter(stt.FallbackAdapter):
    """``stt.FallbackAdapter`` that replays the current utterance to the next member.

    LiveKit's arguments first (``stt``, ``vad``, ``attempt_timeout``, ``max_retry_per_stt``,
    ``retry_interval``), then ours: ``max_replay_s``, ``keys`` (names in events),
    ``tiers``/``selector`` (ordering equal members), ``hedge`` (see the module).
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
        hedge: HedgeFor | None = None,
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
        self.hedge = hedge
        self.hedges: list[SttHedge] = []
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


class _Ended:
    """A stream's end (``error`` None) or failure, as read by :class:`_Feed`."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error


class _Feed:
    """Reads recognition streams in their own tasks into one queue.

    Waiting on a queue can be cancelled safely; cancelling a LiveKit stream's ``__anext__``
    mid-flight cannot. One queue, so the serving stream and a hedge are read together.
    """

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[stt.RecognizeStream, stt.SpeechEvent | _Ended]] = (
            asyncio.Queue()
        )
        self._tasks: dict[stt.RecognizeStream, asyncio.Task[None]] = {}

    def add(self, stream: stt.RecognizeStream) -> None:
        self._tasks[stream] = asyncio.create_task(self._read(stream))

    async def _read(self, stream: stt.RecognizeStream) -> None:
        try:
            async for ev in stream:
                self.queue.put_nowait((stream, ev))
        except Exception as e:
            self.queue.put_nowait((stream, _Ended(e)))
            return
        self.queue.put_nowait((stream, _Ended(None)))

    async def next(
        self, timeout: float
    ) -> tuple[stt.RecognizeStream, stt.SpeechEvent | _Ended] | None:
        try:
            return await get_within(self.queue, timeout)
        except TimeoutError:
            return None

    async def drop(self, stream: stt.RecognizeStream) -> None:
        """Stop reading ``stream`` and close it; what it already sent is ignored by the reader."""
        task = self._tasks.pop(stream, None)
        if task is not None:
            await utils.aio.cancel_and_wait(task)
        with contextlib.suppress(Exception):
            await stream.aclose()

    async def aclose(self) -> None:
        for stream in list(self._tasks):
            await self.drop(stream)


@dataclass
class _Racer:
    """A hedge stream: the next member on the current utterance, beside the serving one."""

    index: int
    stream: stt.RecognizeStream
    record: SttHedge


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
        self._racer: _Racer | None = None
        self._watch: HedgeWatch | None = None  # is the serving member late (hedge)?
        self._input_done = False
        self._heard_s = 0.0  # audio pushed into this stream so far
        #: audio position up to which a hedge delivered the words: the late member's own
        #: transcripts of them are dropped
        self._served_until = 0.0
        #: a hedge won and the caller has not spoken since: a late transcript without
        #: timestamps is the late member's answer to the words already delivered
        self._owed_until_speech = False

    def _open(self, index: int, *, serving: bool = True) -> stt.RecognizeStream:
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
        if serving:
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
                voiced = frame_rms(data) > VOICED_RMS
                if voiced:
                    self._owed_until_speech = False
                if self._watch is not None:
                    self._watch.on_audio(run_time(), data.duration, voiced=voiced)
            else:
                self._utterance.flushed = True
                if self._watch is not None:
                    self._watch.on_flush()
            self._to_active(data)
        self._input_done = True
        if self._watch is not None:
            self._watch.on_flush()
        self._to_active(None)

    def _to_active(self, data: rtc.AudioFrame | object | None) -> None:
        targets = [self._active, self._racer.stream if self._racer is not None else None]
        for stream in targets:
            if stream is None:
                continue
            # a stream that just failed refuses input; the replay on the next one carries it
            with contextlib.suppress(RuntimeError):
                _pass_on(stream, data)

    def _start_hedge(self, index: int, target: int, why: str, feed: _Feed) -> None:
        members = self._adapter._stt_instances
        record = SttHedge(
            source=members[index].label,
            target=members[target].label,
            why=why,
            replayed_s=self._utterance.seconds,
            started_at=time.perf_counter(),
        )
        self._adapter.hedges.append(record)
        log.info(
            "STT late; the next one starts on the caller's utterance alongside it",
            source=record.source,
            target=record.target,
            why=why,
            replayed_s=round(record.replayed_s, 2),
        )
        stream = self._open(target, serving=False)
        self._racer = _Racer(target, stream, record)
        feed.add(stream)

    async def _drop_racer(self, feed: _Feed) -> None:
        racer, self._racer = self._racer, None
        if racer is not None:
            await feed.drop(racer.stream)

    def _stale(self, ev: stt.SpeechEvent) -> bool:
        """A transcript of words a hedge already delivered: they start before the end of the
        hedge's final (or, from a provider that gives no timestamps, it came before the caller
        spoke again)."""
        if not ev.alternatives:
            return False
        alt = ev.alternatives[0]
        if alt.start_time <= 0 and alt.end_time <= 0:
            return self._owed_until_speech
        return alt.start_time < self._served_until

    async def _run(self) -> None:
        adapter = self._adapter
        members = adapter._stt_instances
        walk = adapter.chain.request(lambda i: self._try_recovery(members[i]))
        forwarder = asyncio.create_task(self._forward())
        feed = _Feed()
        pending: SttSwitch | None = None
        try:
            for index in walk.order:
                racer = self._racer
                if racer is not None and racer.index == index:
                    # the hedge already has the utterance and the live audio: it serves on
                    stream, self._racer, self._active = racer.stream, None, racer.stream
                    replayed = racer.record.replayed_s
                else:
                    await self._drop_racer(feed)
                    stream = self._open(index)
                    feed.add(stream)
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
                target = walk.after(index)
                self._watch = (
                    adapter.hedge(members[index], members[target])
                    if adapter.hedge is not None and target is not None
                    else None
                )
                first = True
                try:
                    while True:
                        item = await feed.next(_TICK_S)
                        if item is None:
                            watch = self._watch
                            if watch is None or self._racer is not None or target is None:
                                continue
                            why = watch.due(run_time())
                            if why is not None:
                                self._start_hedge(index, target, why, feed)
                            continue
                        source, ev = item
                        if self._racer is not None and source is self._racer.stream:
                            await self._from_racer(index, ev, walk, feed)
                            continue
                        if source is not stream:
                            continue  # a stream already dropped
                        if isinstance(ev, _Ended):
                            if ev.error is not None:
                                raise ev.error
                            break
                        if first:
                            first = False
                            adapter._active_instance = members[index]
                        if ev.type in TRANSCRIPT_EVENTS and _has_text(ev):
                            if self._stale(ev):
                                log.debug("dropped a late transcript a hedge already delivered")
                                continue
                            final = ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT
                            if self._watch is not None:
                                self._watch.on_transcript(run_time(), final=final)
                            if self._racer is not None:
                                # it answers after all: alive, so the hedge is not needed (a
                                # floor that endpoints sooner must not take its utterance)
                                self._racer.record.winner = members[index].label
                                self._racer.record.won_s = (
                                    time.perf_counter() - self._racer.record.started_at
                                )
                                await self._drop_racer(feed)
                            if final:
                                adapter._active_instance = members[index]
                                walk.served(
                                    index
                                )  # a recognition stream serves utterance by utterance
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
                    self._watch = None
                    await feed.drop(stream)
                walk.served(index)
                return
            await asyncio.gather(
                *(s.aclose() for s in list(self._recovering_streams)), return_exceptions=True
            )
            raise walk.error()
        finally:
            await utils.aio.cancel_and_wait(forwarder)
            self._racer = None
            await feed.aclose()

    async def _from_racer(
        self, index: int, ev: stt.SpeechEvent | _Ended, walk: Any, feed: _Feed
    ) -> None:
        """An event of the hedge: its final wins the utterance if it comes first; the rest
        (interims, speech events) is not the caller's until it serves."""
        racer = self._racer
        assert racer is not None
        if isinstance(ev, _Ended):
            if ev.error is not None:
                log.warning("STT hedge failed", target=racer.record.target, error=str(ev.error))
            await self._drop_racer(feed)
            return
        if not (ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT and _has_text(ev)):
            return
        adapter = self._adapter
        record = racer.record
        record.winner = record.target
        record.won_s = time.perf_counter() - record.started_at
        log.info(
            "STT hedge gave the final first",
            source=record.source,
            target=record.target,
            won_s=round(record.won_s, 3),
        )
        alt = ev.alternatives[0]
        self._served_until = (
            alt.end_time if alt.end_time > 0 else (self.start_time_offset + self._heard_s)
        )
        self._owed_until_speech = True
        self._utterance.clear()
        if self._watch is not None:
            self._watch.settle()
        adapter._active_instance = adapter._stt_instances[racer.index]
        walk.served(racer.index)
        self._event_ch.send_nowait(ev)
        await self._drop_racer(feed)


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
