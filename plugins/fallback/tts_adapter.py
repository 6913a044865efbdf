"""``TTSFallbackAdapter``: LiveKit's ``tts.FallbackAdapter`` that resumes a broken utterance.

A drop-in for ``livekit.agents.tts.FallbackAdapter``: same arguments with the same meaning,
same state (``_status``, ``_active_instance``; ``model``/``provider``/``metrics_metadata`` are
LiveKit's own properties over it), same ``tts_availability_changed`` events, the same start
time on every frame (``lk.tts_started_time``: the moment text was first handed to any member,
so time-to-first-byte includes the time spent failing over), LiveKit's own background
recovery for members we do not guard, and ``APIConnectionError`` when every member failed.

Each member is used the way LiveKit uses it: in ``stream()``, a member that streams gets one
``stream()`` for the whole utterance, fed the text as it is written (a WebSocket TTS such as
Cartesia or ElevenLabs keeps one connection and one context: no per-sentence request, no
prosody break; its plugin segments the text, so nothing is held back twice) and a member that
does not stream gets one ``synthesize()`` per sentence (LiveKit's ``StreamAdapter`` does the
same); ``synthesize()`` asks the members' ``synthesize()``.

On top of it: LiveKit gives up on an utterance once audio was pushed (the caller hears half an
answer, then silence). Ours knows which sentences the caller heard whole - per sentence for
a non-streaming member; for a streaming member from its word timestamps where it sends them
(Cartesia, ElevenLabs), else from the audio received at a deliberately slow speaking rate, so
an unsure sentence is said again rather than skipped - and the next member starts at the
first sentence not heard whole. Leading silence is held back until real audio arrives, so a
member that returns only silence costs no dead air: with ``silence_is_failure`` (the default)
such a member has failed; pass ``False`` for a member whose silence is legitimate.

Optional hedging (``hedge_after_s``), as the LLM adapter's: when the first member of a
streamed utterance has sent no audible audio after ``hedge_after_s(member)`` (its measured
p95), the next member is started on the same text in parallel; the first to send audible
audio is heard and the other is closed, so a late voice costs the caller its p95, not its
first-audio deadline.

Where we differ from LiveKit, deliberately:

* ``capabilities.aligned_transcript`` is ``False``: after a resume the word timings would
  span two voices (and the interrupted sentence twice), so we do not offer them;
  ``capabilities.streaming`` is ``True`` (every member is streamed or fed sentence by
  sentence);
* a failure after audio resumes on the next member instead of ending the utterance;
* ``synthesize(text)`` asks a member for one sentence at a time (LiveKit: the whole text in
  one request), so that the resume point is exact where no word timestamps come back;
* guarded members are tried on every request and recover through their probers (see
  :mod:`plugins.fallback.cursor`); LiveKit's replay recovery runs for the others only.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from livekit import rtc
from livekit.agents import APIConnectOptions, tokenize, tts, utils
from livekit.agents.tts.fallback_adapter import DEFAULT_FALLBACK_API_CONNECT_OPTIONS
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT
from livekit.agents.voice.io import TimedString

from plugins.fallback.align import after_non_space, non_space
from plugins.fallback.cursor import ChainCursor, TierSelector, Walk
from plugins.fallback.telemetry import record_served
from plugins.fallback.warm import Warmer
from plugins.resilience.failures import EmptyResultError, ProviderUnavailableError
from plugins.resilience.guard import Pump
from plugins.resilience.guard_tts import SILENCE_PEAK

log = structlog.get_logger(__name__)

HedgeAfter = Callable[[tts.TTS[Any]], float | None]

#: Speaking rate used to guess how much of a streamed utterance was heard when the member
#: sends no word timestamps. Slower than any real voice, so a sentence in doubt is repeated.
SLOW_CHARS_PER_S = 10.0


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


class TTSFallbackAdapter(tts.FallbackAdapter):
    """``tts.FallbackAdapter`` that resumes at the first unspoken sentence on the next member.

    LiveKit's arguments first (``tts``, ``max_retry_per_tts``, ``sample_rate``), then ours:
    ``silence_is_failure``, ``silence_peak`` (int16 peak below which audio is silence),
    ``sentence_tokenizer``, ``keys`` (names in events), ``tiers``/``selector``,
    ``hedge_after_s(member)`` (the lateness of first audio after which the next member is
    started in parallel; ``None``: never).
    """

    def __init__(
        self,
        tts: list[tts.TTS[Any]],
        *,
        max_retry_per_tts: int = 2,
        sample_rate: int | None = None,
        silence_is_failure: bool = True,
        silence_peak: int = SILENCE_PEAK,
        sentence_tokenizer: tokenize.SentenceTokenizer | None = None,
        keys: Sequence[str] | None = None,
        tiers: Sequence[int] | None = None,
        selector: TierSelector | None = None,
        hedge_after_s: HedgeAfter | None = None,
    ) -> None:
        super().__init__(tts, max_retry_per_tts=max_retry_per_tts, sample_rate=sample_rate)
        self.hedge_after_s = hedge_after_s
        self.silence_is_failure = silence_is_failure
        self.silence_peak = silence_peak
        self.tokenizer = sentence_tokenizer or tokenize.basic.SentenceTokenizer()
        self.switches: list[VoiceSwitch] = []  # every mid-utterance switch (bench, tests)
        self.delivered: list[tuple[str, str]] = []  # (voice label, sentence) heard whole
        self.chain = ChainCursor(
            "tts",
            self._tts_instances,
            self._status,
            announce=self._announce,
            keys=keys,
            tiers=tiers,
            selector=selector,
        )
        self.on("tts_availability_changed", self._availability_changed)
        #: warms the serving member at call start and the next one when one falters
        self.warmer = Warmer(self.chain)

    @property
    def members(self) -> list[tts.TTS[Any]]:
        return list(self._tts_instances)

    @property
    def capabilities(self) -> tts.TTSCapabilities:
        return tts.TTSCapabilities(streaming=True, aligned_transcript=False)

    def synthesize(
        self,
        text: str,
        *,
        conn_options: APIConnectOptions = DEFAULT_FALLBACK_API_CONNECT_OPTIONS,
    ) -> TTSFallbackChunkedStream:
        return TTSFallbackChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self,
        *,
        conn_options: APIConnectOptions = DEFAULT_FALLBACK_API_CONNECT_OPTIONS,
    ) -> TTSFallbackSynthesizeStream:
        return TTSFallbackSynthesizeStream(tts=self, conn_options=conn_options)

    def prewarm(self) -> None:
        """Warm the member that will serve (LiveKit: always member 0)."""
        self.warmer.prewarm()

    async def aclose(self) -> None:
        self.chain.close()
        self.warmer.close()
        await super().aclose()

    def _announce(self, member: tts.TTS[Any], available: bool) -> None:
        self.emit(
            "tts_availability_changed",
            tts.AvailabilityChangedEvent(tts=member, available=available),
        )

    def _availability_changed(self, ev: tts.AvailabilityChangedEvent) -> None:
        self.chain.availability_changed(ev.tts, ev.available)


class _RacerFailedError(Exception):
    """A hedge racer failed: ``index``'s ``error``; the walk resumes after ``last``."""

    def __init__(self, index: int, error: Exception, *, last: int) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error
        self.last = last


class _Script:
    """The utterance as it is written: its text, and its sentences as they become known.

    A member that streams is handed the text as written (LiveKit's own adapter does the same):
    its plugin segments it, and a member that got whole sentences instead would hold each
    one back until the next arrived. The sentences, and where each ends in the text, are
    for the resume: a member taking over starts at the first sentence the caller did not
    hear whole.
    """

    def __init__(self) -> None:
        self.text = ""
        self.sentences: list[str] = []
        self.ends: list[int] = []  # where each sentence ends in ``text``
        self.ended = False
        self._changed = asyncio.Event()

    def write(self, text: str) -> None:
        if text:
            self.text += text
            self._changed.set()

    def add(self, sentence: str) -> None:
        if sentence.strip():
            start = self.ends[-1] if self.ends else 0
            self.ends.append(after_non_space(self.text, non_space(sentence), start))
            self.sentences.append(sentence.strip())
            self._changed.set()

    def end(self) -> None:
        self.ended = True
        self._changed.set()

    def start_of(self, index: int) -> int:
        """Where sentence ``index`` starts in ``text`` (the sentences before it are known)."""
        return self.ends[index - 1] if index else 0

    def whole_before(self, offset: int) -> int:
        """How many sentences end at or before ``offset`` in ``text``."""
        return bisect.bisect_right(self.ends, offset)

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready() and not self.ended:
            self._changed.clear()
            await self._changed.wait()

    async def get(self, index: int) -> str | None:
        """Sentence ``index`` once known; ``None`` when the utterance ended before it."""
        await self._until(lambda: index < len(self.sentences))
        return self.sentences[index] if index < len(self.sentences) else None

    async def text_after(self, offset: int) -> str | None:
        """The text written after ``offset``, once there is some; ``None`` when the utterance
        ended (its last sentence is known by then) with nothing more."""
        await self._until(lambda: len(self.text) > offset)
        return self.text[offset:] if len(self.text) > offset else None

    async def anything(self) -> bool:
        """Whether the utterance has something to say (waits for its first word)."""
        await self._until(lambda: bool(self.text.strip()))
        return bool(self.text.strip())


class _Take:
    """One member's audio for (part of) the utterance: resampled, leading silence held."""

    def __init__(self, voice: _Voice, index: int) -> None:
        adapter = voice.adapter
        member = adapter._tts_instances[index]
        self._voice = voice
        self._index = index
        self._resampler = (
            rtc.AudioResampler(
                input_rate=member.sample_rate,
                output_rate=adapter.sample_rate,
                num_channels=adapter.num_channels,
            )
            if adapter._status[index].needs_resampling
            else None
        )
        self._hold = adapter.silence_is_failure
        self._held: list[rtc.AudioFrame] = []
        self.frames = 0
        self.reached_caller = False  # some of this take's audio went to the caller
        self.audible = not adapter.silence_is_failure
        self.member_s = 0.0  # audio received from the member in this take

    def push(self, frame: rtc.AudioFrame) -> None:
        self.member_s += frame.duration
        for out in self._resampler.push(frame) if self._resampler else [frame]:
            self._out(out)

    def finish(self, label: str, *, expected: bool) -> None:
        """End of the member's audio; raises when it said nothing audible."""
        if self._resampler is not None:
            for out in self._resampler.flush():
                self._out(out)
        if expected and not self.frames:
            raise EmptyResultError(f"{label} returned no audio")
        if expected and not self.audible:
            raise EmptyResultError(f"{label} returned no audible audio")

    def _out(self, frame: rtc.AudioFrame) -> None:
        self.frames += 1
        voice = self._voice
        if self._hold and not self.audible:
            if _peak(frame) <= voice.adapter.silence_peak:
                self._held.append(frame)  # leading silence waits for real audio
                return
            self.audible = True
        if not voice.claim(self._index):
            return  # a hedge race this take lost: the winner's audio is what the caller hears
        self.reached_caller = True
        for held in self._held:
            voice.emitter.push_frame(held)
        self._held.clear()
        voice.emitter.push_frame(frame)
        voice.heard(self._index)


class _Voice:
    """Speaks the script on the chain's members in turn, resuming where the caller stopped
    hearing whole sentences."""

    def __init__(
        self,
        adapter: TTSFallbackAdapter,
        emitter: tts.AudioEmitter,
        conn_options: APIConnectOptions,
        script: _Script,
        on_first_text: Callable[[], None],
        *,
        streamed: bool,
    ) -> None:
        self.adapter = adapter
        self.streamed = streamed  # a streaming member gets one stream() for the utterance
        self.emitter = emitter
        self.conn = dataclasses.replace(conn_options, max_retry=adapter._max_retry_per_tts)
        self.script = script
        self.done = 0  # sentences heard whole
        self.last_audible = 0.0
        self._on_first_text = on_first_text
        self._text_sent = False
        self._pending: tuple[int, int, str] | None = None  # (failed member, sentence, error)
        self._take_started = False
        self._racers: dict[int, asyncio.Task[None]] = {}  # a hedge race: member -> its take
        self._owner: int | None = None  # the racer the caller hears

    def claim(self, index: int) -> bool:
        """Whether member ``index`` may reach the caller; the first racer to ask wins, and
        the other is cancelled."""
        if not self._racers:
            return True
        if self._owner is None:
            self._owner = index
            for other, task in self._racers.items():
                if other != index:
                    task.cancel()
        return self._owner == index

    async def speak(self, walk: Walk[tts.TTS[Any]]) -> int | None:
        """Speak everything; returns the index of the member that finished it (``None``:
        there was nothing to say). Raises ``APIConnectionError`` when nobody could."""
        if not await self.script.anything():
            return None
        members = self.adapter._tts_instances
        order = list(walk.order)
        position = 0
        while position < len(order):
            index = order[position]
            position += 1
            self._take_started = False
            try:
                partner = self._hedge_partner(walk, index)
                if partner is not None:
                    index = await self._race(walk, index, *partner)
                elif self.streamed and members[index].capabilities.streaming:
                    await self._stream_on(index)
                else:
                    await self._sentences_on(index)
            except asyncio.CancelledError:
                raise
            except _RacerFailedError as race:  # a hedge race ended in a failure
                position = order.index(race.last) + 1
                if self._failed(walk, race.index, race.error):
                    return race.index
                continue
            except Exception as e:
                if self._failed(walk, index, e):
                    return index  # every sentence was heard: nothing is left to say
                continue
            walk.served(index)
            return index
        raise walk.error(f" at sentence {self.done + 1}")

    def _failed(self, walk: Walk[tts.TTS[Any]], index: int, e: BaseException) -> bool:
        """Record member ``index``'s failure; True when nothing is left to say anyway."""
        walk.failed(index, e)
        if not isinstance(e, ProviderUnavailableError):  # a refusal is not news
            log.warning(
                "TTS failed; moving to the next voice",
                provider=self.adapter._tts_instances[index].label,
                sentence=self.done + 1,
                error=str(e),
            )
        if self._pending is None and (self.done > 0 or self.last_audible > 0):
            self._pending = (index, self.done, str(e))
        return self.script.ended and self.done >= len(self.script.sentences)

    def _hedge_partner(self, walk: Walk[tts.TTS[Any]], index: int) -> tuple[int, float] | None:
        """(the next member, the hedge delay) when ``index`` should be hedged: a streamed
        utterance nobody has heard yet, both members streaming, and a measured p95."""
        hedge_after = self.adapter.hedge_after_s
        if hedge_after is None or not self.streamed or self.done or self.last_audible:
            return None
        other = walk.after(index)
        members = self.adapter._tts_instances
        if other is None or not all(members[i].capabilities.streaming for i in (index, other)):
            return None
        delay = hedge_after(members[index])
        return None if delay is None else (other, delay)

    async def _race(self, walk: Walk[tts.TTS[Any]], first: int, second: int, delay: float) -> int:
        """``first``, joined by ``second`` if no audible audio came within ``delay``; the first
        racer heard keeps the utterance. Returns the member that finished it."""
        members = self.adapter._tts_instances
        self._owner = None
        self._racers = {first: asyncio.create_task(self._stream_on(first))}
        # the voice is late from when it has a whole sentence to say, not from the first word
        said = asyncio.ensure_future(self.script.get(self.done))
        try:
            await asyncio.wait([self._racers[first], said], return_when=asyncio.FIRST_COMPLETED)
            await asyncio.wait([self._racers[first]], timeout=delay)
            if not self._racers[first].done() and self._owner is None:
                log.info(
                    "voice late; hedging with the next voice",
                    late=members[first].label,
                    hedge=members[second].label,
                    after_s=round(delay, 3),
                )
                self._racers[second] = asyncio.create_task(self._stream_on(second))
            errors: dict[int, Exception] = {}
            pending = set(self._racers.values())
            while pending and self._owner not in errors:  # heard, then failed: stop there
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for index, task in self._racers.items():
                    if task not in done or task.cancelled():
                        continue  # still running, or the loser (cancelled by the winner)
                    if (error := task.exception()) is None:
                        for loser, failure in errors.items():  # failed before it was heard
                            self._failed(walk, loser, failure)
                        return index
                    if not isinstance(error, Exception):
                        raise error
                    errors[index] = error
            # the failure to report is the heard racer's, else the later one's; the walk goes
            # on after the later of those that failed (a cancelled loser did not fail)
            later = max(errors, key=walk.order.index)
            reported = self._owner if self._owner in errors else later
            assert reported is not None
            for index, error in errors.items():
                if index != reported:
                    self._failed(walk, index, error)
            raise _RacerFailedError(reported, errors[reported], last=later)
        finally:
            said.cancel()
            for task in self._racers.values():
                if not task.done():
                    task.cancel()
            racers = list(self._racers.values())
            self._racers = {}
            for task in racers:
                await utils.aio.cancel_and_wait(task)

    def _text_out(self) -> None:
        if not self._text_sent:
            self._text_sent = True
            self._on_first_text()

    async def _sentences_on(self, index: int) -> None:
        """A member that does not stream: one ``synthesize()`` per sentence."""
        member = self.adapter._tts_instances[index]
        while (sentence := await self.script.get(self.done)) is not None:
            self._text_out()
            take = _Take(self, index)
            async with member.synthesize(sentence, conn_options=self.conn) as stream:
                async for audio in stream:
                    take.push(audio.frame)
            take.finish(member.label, expected=True)
            self._delivered(index, [sentence])

    async def _stream_on(self, index: int) -> None:
        """A member that streams: one ``stream()`` for the rest of the utterance."""
        member = self.adapter._tts_instances[index]
        script = self.script
        start = self.done
        given = script.start_of(start)  # how far into the text this member was handed
        take = _Take(self, index)
        timed: list[TimedString] = []
        stream = member.stream(conn_options=self.conn)

        def pushed() -> list[str]:
            """The sentences handed to this member whole."""
            return script.sentences[start : script.whole_before(given)]

        async def feed() -> None:
            nonlocal given
            began = False
            while (text := await script.text_after(given)) is not None:
                given += len(text)
                text = text if began else text.lstrip()  # no leading space on a resume
                if text:
                    began = True
                    self._text_out()
                    stream.push_text(text)
            stream.end_input()

        feeder = asyncio.create_task(feed())
        pump: Pump[tts.SynthesizedAudio] = Pump(stream)
        try:
            while (audio := await pump.next(None)) is not None:
                for text in audio.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, []):
                    if isinstance(text, TimedString):
                        timed.append(text)
                take.push(audio.frame)
            if feeder.done() and (error := feeder.exception()) is not None:
                raise error
            take.finish(member.label, expected=bool(pushed()))
        except BaseException:
            # held silence never reached the caller: nothing of this take was heard
            whole = pushed()
            heard = _heard_whole(whole, timed, take.member_s) if take.reached_caller else 0
            self._delivered(index, whole[:heard])
            raise
        finally:
            await utils.aio.cancel_and_wait(feeder)
            await pump.aclose()
            await stream.aclose()
        self._delivered(index, pushed())

    def _delivered(self, index: int, sentences: list[str]) -> None:
        label = self.adapter._tts_instances[index].label
        self.done += len(sentences)
        self.adapter.delivered.extend((label, s) for s in sentences)

    def heard(self, index: int) -> None:
        """Audio from member ``index`` went to the caller (with ``silence_is_failure``: once
        it was audible)."""
        if not self._take_started:
            self._take_started = True
            # LiveKit: the instance whose audio the caller hears names the metrics
            self.adapter._active_instance = self.adapter._tts_instances[index]
            self._bridged(index)
        self.last_audible = time.perf_counter()

    def _bridged(self, index: int) -> None:
        if self._pending is None:
            return
        source, number, error = self._pending
        self._pending = None
        members = self.adapter._tts_instances
        now = time.perf_counter()
        switch = VoiceSwitch(
            source=members[source].label,
            target=members[index].label,
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


def _heard_whole(pushed: list[str], timed: list[TimedString], audio_s: float) -> int:
    """How many of the ``pushed`` sentences the caller heard whole after ``audio_s`` seconds
    of a member's streamed audio: by its word timestamps if it sent any, else by a slow
    speaking rate (a sentence in doubt counts as not heard, and is said again)."""
    words = [len(s.split()) for s in pushed]
    if timed:
        spoken = sum(
            len(t.split())
            for t in timed
            if isinstance(t.end_time, float | int) and t.end_time <= audio_s + 0.05
        )
        budget: float = spoken
        sizes: list[float] = [float(w) for w in words]
    else:
        budget = audio_s * SLOW_CHARS_PER_S
        sizes = [float(len(s)) for s in pushed]
    heard = 0
    for size in sizes:
        if budget < size:
            break
        budget -= size
        heard += 1
    return heard


class TTSFallbackChunkedStream(tts.FallbackChunkedStream):
    """LiveKit's fallback chunked stream with our resuming voice."""

    def __init__(
        self, *, tts: TTSFallbackAdapter, input_text: str, conn_options: APIConnectOptions
    ) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._adapter = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        adapter = self._adapter
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=adapter.sample_rate,
            num_channels=adapter.num_channels,
            mime_type="audio/pcm",
        )
        script = _Script()
        script.write(self._input_text)
        for sentence in adapter.tokenizer.tokenize(self._input_text):
            script.add(sentence)
        script.end()
        # the chunked stream's start time is its creation (LiveKit stamps every frame with it)
        voice = _Voice(
            adapter, output_emitter, self._conn_options, script, lambda: None, streamed=False
        )
        members = adapter._tts_instances
        walk = adapter.chain.request(lambda i: self._try_recovery(members[i]))
        served = await voice.speak(walk)
        if served is not None:
            record_served(members[served], served, self._tts_request_span, self._caller_span)


class TTSFallbackSynthesizeStream(tts.FallbackSynthesizeStream):
    """LiveKit's fallback synthesize stream with our resuming voice."""

    def __init__(self, *, tts: TTSFallbackAdapter, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._adapter = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        adapter = self._adapter
        self._pushed_tokens = []  # LiveKit's recovery replays these
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=adapter.sample_rate,
            num_channels=adapter.num_channels,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=utils.shortuuid())
        script = _Script()
        words = adapter.tokenizer.stream()

        async def feed() -> None:
            async for data in self._input_ch:
                if isinstance(data, str):
                    if data:
                        self._pushed_tokens.append(data)
                    script.write(data)
                    words.push_text(data)
                else:
                    words.flush()
            words.end_input()

        async def split() -> None:
            async for token in words:
                script.add(token.token)
            script.end()

        tasks = [asyncio.create_task(feed()), asyncio.create_task(split())]
        # TTFB counts from the first text handed to any member, failed ones included
        voice = _Voice(
            adapter, output_emitter, self._conn_options, script, self._mark_started, streamed=True
        )
        members = adapter._tts_instances
        walk = adapter.chain.request(lambda i: self._try_recovery(members[i]), defer_recovery=True)
        try:
            served = await voice.speak(walk)
            for task in tasks:
                await task
        finally:
            for task in tasks:
                await utils.aio.cancel_and_wait(task)
            await words.aclose()
            walk.finish()  # LiveKit starts its recoveries once the input was read
        if served is not None:
            record_served(members[served], served, self._tts_request_span, self._caller_span)
        output_emitter.end_segment()
