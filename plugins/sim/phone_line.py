"""A virtual phone line: a real ``AgentSession`` driven by a synthetic caller, no room, no server.

Tests and ``simulate`` need to hear what a caller would hear: the agent's real pipeline (VAD,
turn detection, STT, LLM, TTS, fallbacks) fed with speech audio, and the agent's audio played
out at the pace a phone would play it. LiveKit's extension points for this are its I/O classes:
:class:`CallerAudioInput` is an ``AudioInput`` that streams the caller's voice (and the line's
silence between turns) in paced frames, and :class:`PlayoutAudioOutput` is an ``AudioOutput``
that plays the agent's audio on a simulated clock, reporting ``playback_started`` /
``playback_finished`` exactly as a real sink does, so the session advances turn by turn.

:class:`PhoneLine` ties them to a session and turns the call into awaitable steps::

    async with PhoneLine(session, agent) as line:
        greeting = await line.listen()
        turn = await line.say("Hi, I'd like to know your pricing")
        print(turn.text, turn.latency_s)

Every wait has a deadline and fails with :class:`PhoneLineTimeoutError`, which names what did not
happen and carries whatever the agent did produce: a line never hangs a test or a demo.

Time: with ``speed=1`` everything runs at the pace of a real call. ``speed>1`` plays the caller's
audio and the agent's playout that much faster than real time (the VAD measures speech in
samples, so it keeps working); processing (STT, LLM, TTS) always runs at its real speed, so
latencies are measured in wall-clock seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import structlog
from livekit import rtc
from livekit.agents import Agent, AgentSession, llm
from livekit.agents.voice import io
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    ConversationItemAddedEvent,
    UserInputTranscribedEvent,
)
from numpy.typing import NDArray

from plugins.local.audio import Int16Array, resample

log = structlog.get_logger(__name__)

CallerVoice = Callable[[str], tuple[Int16Array, int]]
"""Text -> (mono int16 PCM, sample rate): how the simulated caller pronounces a line."""

DEFAULT_LINE_RATE = 16000  # wideband telephony; what Silero and PocketSphinx work at
DEFAULT_AGENT_RATE = 24000  # the agent's side is kept at the TTS voices' common rate
SILENCE_DBFS = -50.0  # quieter than this counts as silence inside an agent turn


class PhoneLineTimeoutError(TimeoutError):
    """Something the line waited for did not happen in time; ``turn`` holds what did."""

    def __init__(self, message: str, turn: AgentTurn | None = None) -> None:
        super().__init__(message)
        self.turn = turn


def hibari_voice(text: str) -> tuple[Int16Array, int]:
    """The default caller voice: the local neural TTS (accurately recognised by every STT)."""
    from plugins.local.hibari_tts import HibariEngine

    engine = HibariEngine.shared()
    return engine.synthesize(text), engine.sample_rate


# ---------------------------------------------------------------------------------------------
# caller side
# ---------------------------------------------------------------------------------------------


@dataclass
class _Utterance:
    pcm: Int16Array
    done: asyncio.Future[float]  # resolved with the wall time the last sample left the line
    position: int = 0
    start_frame: int = 0  # the line's frame index its first sample is on


class CallerAudioInput(io.AudioInput):
    """The caller's microphone: paced frames of speech when the caller talks, silence otherwise.

    A phone line never stops sending audio, and the VAD needs the silence after speech to see the
    end of a turn, so frames flow continuously, one ``frame_ms`` frame per ``frame_ms / speed``
    of wall-clock time. The session pulls frames (``__anext__``); pacing happens there, so no
    background task is needed and a slow consumer simply catches up.

    The line keeps the caller's clock, not the consumer's: frame ``k`` is on the wire at
    ``start + k * frame_s``, whenever the session gets round to reading it. An utterance starts
    at the first frame not yet on the wire when the caller begins to speak, and its ``done``
    time is when its last frame was on the wire. A session too busy to read its input in time
    (a starved event loop) therefore shows up in the response time, as it would for a real
    caller, instead of delaying the caller's own clock.
    """

    def __init__(
        self, *, sample_rate: int = DEFAULT_LINE_RATE, frame_ms: int = 20, speed: float = 1.0
    ) -> None:
        super().__init__(label="PhoneLine caller")
        if sample_rate <= 0:
            raise ValueError(f"line sample_rate must be positive, got {sample_rate}")
        if not 10 <= frame_ms <= 100:
            raise ValueError(f"frame_ms must be between 10 and 100 ms, got {frame_ms}")
        if not 0.25 <= speed <= 8.0:
            raise ValueError(f"speed must be between 0.25 and 8 (1 = real time), got {speed}")
        self.sample_rate = sample_rate
        self.samples_per_frame = sample_rate * frame_ms // 1000
        self.frame_s = self.samples_per_frame / sample_rate
        self.speed = speed
        self._queue: list[_Utterance] = []
        self._started_at: float | None = None
        self._frames_sent = 0
        self._closed = False
        self._silence = bytes(self.samples_per_frame * 2)
        self._recording: list[tuple[float, Int16Array]] = []  # (wall start, speech) per utterance

    def speak(self, pcm: Int16Array) -> asyncio.Future[float]:
        """Queue speech (mono int16 at the line rate); resolves when it has been sent."""
        if self._closed:
            raise RuntimeError("the caller's line is closed; open a new PhoneLine")
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError("caller speech must be mono int16 PCM at the line's sample rate")
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        # frames already due are on the wire (silence) even if the session has not read them
        start = self._frames_sent
        if self._started_at is not None:
            due_now = math.ceil((time.monotonic() - self._started_at) * self.speed / self.frame_s)
            start = max(start, due_now)
        if self._queue:
            last = self._queue[-1]
            start = max(start, last.start_frame + -(-last.pcm.size // self.samples_per_frame))
        self._queue.append(_Utterance(pcm, done, start_frame=start))
        return done

    @property
    def speaking(self) -> bool:
        return bool(self._queue)

    def caller_track(self) -> list[tuple[float, Int16Array]]:
        """What the caller said and when (wall-clock start), for recordings."""
        return list(self._recording)

    def close(self) -> None:
        self._closed = True
        for utterance in self._queue:
            if not utterance.done.done():
                utterance.done.cancel()
        self._queue.clear()

    async def __anext__(self) -> rtc.AudioFrame:
        if self._closed:
            raise StopAsyncIteration
        now = time.monotonic()
        if self._started_at is None:
            self._started_at = now
        due = self._started_at + self._frames_sent * self.frame_s / self.speed
        if due > now:
            await asyncio.sleep(due - now)
        if self._closed:
            raise StopAsyncIteration
        self._frames_sent += 1
        return rtc.AudioFrame(
            data=self._next_chunk(), sample_rate=self.sample_rate, num_channels=1,
            samples_per_channel=self.samples_per_frame,
        )  # fmt: skip

    def _wall_time_of_frame(self, index: int) -> float:
        """Wall-clock time frame ``index`` goes on the wire (the caller's clock)."""
        assert self._started_at is not None
        due = self._started_at + index * self.frame_s / self.speed
        return time.time() + (due - time.monotonic())

    def _next_chunk(self) -> bytes:
        index = self._frames_sent - 1  # the frame being handed over
        if not self._queue or index < self._queue[0].start_frame:
            return self._silence
        utterance = self._queue[0]
        if utterance.position == 0:
            self._recording.append((self._wall_time_of_frame(index), utterance.pcm))
        end = utterance.position + self.samples_per_frame
        chunk = utterance.pcm[utterance.position : end]
        utterance.position = end
        if end >= utterance.pcm.size:
            self._queue.pop(0)
            if not utterance.done.done():
                # the caller's last sample was on the line at the end of this frame
                utterance.done.set_result(self._wall_time_of_frame(index + 1))
        data = chunk.tobytes()
        return data + self._silence[len(data) :]


# ---------------------------------------------------------------------------------------------
# agent side
# ---------------------------------------------------------------------------------------------


@dataclass
class PlayedFrame:
    starts_at: float  # wall-clock time this frame starts playing
    pcm: Int16Array


@dataclass
class _Segment:
    started_at: float  # wall clock, first frame
    frames: list[PlayedFrame] = field(default_factory=list)
    pushed_s: float = 0.0  # audio seconds captured
    underruns: list[float] = field(default_factory=list)  # wall seconds the buffer ran dry
    flushed: bool = False
    cleared: bool = False  # interrupted while still being captured: the rest is dropped
    finished: bool = False
    interrupted: bool = False
    played_s: float = 0.0
    finish_task: asyncio.Task[None] | None = None


class PlayoutAudioOutput(io.AudioOutput):
    """The caller's earpiece: plays the agent's audio on a simulated real-time clock.

    Frames may arrive faster than real time (a TTS is usually faster); they queue on the playout
    clock and each segment reports ``playback_finished`` when its last frame would have been
    heard. A frame that arrives after the buffer ran dry is an underrun: the caller heard
    silence in the middle of the agent's turn, and the gap is recorded. ``clear_buffer``
    (an interruption) stops playout at once and keeps only what was heard.
    """

    def __init__(
        self,
        *,
        sample_rate: int = DEFAULT_AGENT_RATE,
        speed: float = 1.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            label="PhoneLine earpiece",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=sample_rate,
        )
        self._rate = sample_rate
        self._speed = speed
        self._on_change = on_change or (lambda: None)
        self._segments: list[_Segment] = []
        self._current: _Segment | None = None
        self._clock = 0.0  # wall time the queued audio finishes playing

    @property
    def rate(self) -> int:
        return self._rate

    @property
    def segments(self) -> list[_Segment]:
        return list(self._segments)

    @property
    def playing(self) -> bool:
        return any(not s.finished for s in self._segments)

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if frame.num_channels != 1 or frame.sample_rate != self._rate:
            raise ValueError(
                f"the phone line plays mono {self._rate} Hz audio, got "
                f"{frame.num_channels} channel(s) at {frame.sample_rate} Hz"
            )
        now = time.time()
        segment = self._current
        if segment is None:
            start = max(now, self._clock)
            segment = _Segment(started_at=start)
            self._current = segment
            self._segments.append(segment)
            self._clock = start
            self.on_playback_started(created_at=start)
        elif self._clock < now:
            segment.underruns.append(now - self._clock)
            self._clock = now
        if segment.cleared:
            return  # the caller already stopped hearing this segment
        pcm = np.frombuffer(frame.data, dtype=np.int16).copy()
        segment.frames.append(PlayedFrame(self._clock, pcm))
        segment.pushed_s += frame.duration
        self._clock += frame.duration / self._speed
        self._on_change()

    def flush(self) -> None:
        super().flush()
        segment = self._current
        if segment is None:
            return
        self._current = None
        segment.flushed = True
        if segment.cleared:
            self._finish(segment, played_s=segment.played_s, interrupted=True)
            return
        segment.finish_task = asyncio.create_task(self._finish_at(segment, self._clock))

    async def _finish_at(self, segment: _Segment, ends_at: float) -> None:
        await asyncio.sleep(max(0.0, ends_at - time.time()))
        if not segment.finished:
            self._finish(segment, played_s=segment.pushed_s, interrupted=False)

    def clear_buffer(self) -> None:
        now = time.time()
        for segment in self._segments:
            if segment.finished or segment.cleared:
                continue
            kept = [f for f in segment.frames if f.starts_at < now]
            if kept:
                last = kept[-1]
                heard = max(0, round((now - last.starts_at) * self._speed * self._rate))
                if heard < last.pcm.size:
                    kept[-1] = PlayedFrame(last.starts_at, last.pcm[:heard])
            segment.frames = kept
            played = sum(f.pcm.size for f in kept) / self._rate
            if segment.finish_task is not None:
                segment.finish_task.cancel()
            if segment is self._current:
                # LiveKit counts a segment until it is flushed: report it then, once
                segment.cleared = True
                segment.played_s = played
                continue
            self._finish(segment, played_s=played, interrupted=True)
        self._clock = now

    def _finish(self, segment: _Segment, *, played_s: float, interrupted: bool) -> None:
        segment.finished = True
        segment.interrupted = interrupted
        segment.played_s = played_s
        self.on_playback_finished(playback_position=played_s, interrupted=interrupted)
        self._on_change()

    def agent_track(self, since: float) -> Int16Array:
        """Everything the caller heard from ``since`` (wall clock), silence included."""
        frames = [f for s in self._segments for f in s.frames]
        if not frames:
            return np.zeros(0, dtype=np.int16)
        end = max(f.starts_at + f.pcm.size / self._rate / self._speed for f in frames)
        track = np.zeros(math.ceil((end - since) * self._speed * self._rate), dtype=np.int16)
        for f in frames:
            at = max(0, round((f.starts_at - since) * self._speed * self._rate))
            part = f.pcm[: max(0, track.size - at)]
            track[at : at + part.size] = part
        return track

    async def aclose(self) -> None:
        tasks = [s.finish_task for s in self._segments if s.finish_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------
# turns
# ---------------------------------------------------------------------------------------------


@dataclass
class AgentTurn:
    """One reply of the agent, as the caller experienced it."""

    index: int
    said: str  # what the caller said (empty for the greeting)
    heard: str  # what the agent's STT made of it (the user message it committed)
    text: str  # what the agent said (its assistant messages in this turn)
    audio: Int16Array  # the agent's audio in this turn, gaps removed
    sample_rate: int
    latency_s: float | None  # end of the caller's speech -> first agent audio (wall clock)
    playout_gaps_s: list[float]  # silences the caller heard inside the turn (underruns, pauses)
    interrupted: bool = False
    error: str | None = None  # set when the turn timed out (see PhoneLineTimeoutError)

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate

    @property
    def longest_silence_s(self) -> float:
        """Longest silent stretch inside the agent's audio (a silent voice shows up here)."""
        return longest_silence(self.audio, self.sample_rate)

    @property
    def answered(self) -> bool:
        """The caller heard speech: some audio that is not silence."""
        return self.error is None and speech_seconds(self.audio, self.sample_rate) >= 0.2


_WINDOW_S = 0.02


def loud_windows(pcm: Int16Array, sample_rate: int) -> NDArray[np.bool_]:
    """For each 20 ms window of ``pcm``: is it louder than silence?"""
    n = max(1, int(sample_rate * _WINDOW_S))
    usable = pcm[: pcm.size - pcm.size % n].astype(np.float64).reshape(-1, n)
    if usable.size == 0:
        return np.zeros(0, dtype=np.bool_)
    rms = np.sqrt(np.mean(np.square(usable), axis=1))
    result: NDArray[np.bool_] = 20.0 * np.log10(np.maximum(rms, 1e-9) / 32767.0) >= SILENCE_DBFS
    return result


def speech_seconds(pcm: Int16Array, sample_rate: int) -> float:
    """How much of ``pcm`` is louder than silence, in seconds."""
    return float(loud_windows(pcm, sample_rate).sum()) * _WINDOW_S


def longest_silence(pcm: Int16Array, sample_rate: int) -> float:
    """Longest run of silence between the first and the last loud 20 ms window."""
    idx = np.flatnonzero(loud_windows(pcm, sample_rate))
    if idx.size < 2:
        return 0.0
    return float(np.max(np.diff(idx)) - 1) * _WINDOW_S


def trailing_silence(pcm: Int16Array, sample_rate: int) -> float:
    """Seconds of silence after the last loud window (all of it if nothing is loud)."""
    idx = np.flatnonzero(loud_windows(pcm, sample_rate))
    if idx.size == 0:
        return pcm.size / sample_rate
    return max(0.0, pcm.size / sample_rate - (int(idx[-1]) + 1) * _WINDOW_S)


# ---------------------------------------------------------------------------------------------
# the line
# ---------------------------------------------------------------------------------------------


class PhoneLine:
    """A call between a synthetic caller and a real ``AgentSession``.

    The session must not be started yet: the line installs its audio input and output and
    starts it with ``agent`` (no room). Closing the line closes the session.
    """

    def __init__(
        self,
        session: AgentSession[Any],
        agent: Agent,
        *,
        voice: CallerVoice = hibari_voice,
        line_rate: int = DEFAULT_LINE_RATE,
        agent_rate: int = DEFAULT_AGENT_RATE,
        frame_ms: int = 20,
        speed: float = 1.0,
        start_timeout: float = 30.0,
        reply_timeout: float = 20.0,
        turn_timeout: float = 60.0,
        settle_s: float = 0.4,
    ) -> None:
        self.session = session
        self.agent = agent
        self._voice = voice
        self.speed = speed
        self.start_timeout = start_timeout
        self.reply_timeout = reply_timeout
        self.turn_timeout = turn_timeout
        self.settle_s = settle_s
        self.caller = CallerAudioInput(sample_rate=line_rate, frame_ms=frame_ms, speed=speed)
        self.earpiece = PlayoutAudioOutput(
            sample_rate=agent_rate, speed=speed, on_change=self._poke
        )
        self.turns: list[AgentTurn] = []
        self.transcript: list[tuple[str, str]] = []  # (role, text) as the session committed it
        self.agent_state = "initializing"
        self._changed = asyncio.Event()
        self._last_change = time.monotonic()
        self._finals: list[str] = []
        self._opened_at = 0.0
        self._items: list[llm.ChatMessage] = []
        self._started = False
        self._after_last_turn = (0, 0, 0)  # what the previous turn already accounted for

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> PhoneLine:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        if self._started:
            raise RuntimeError("this PhoneLine is already open")
        self._started = True
        self.session.on("agent_state_changed", self._on_agent_state)
        self.session.on("conversation_item_added", self._on_item)
        self.session.on("user_input_transcribed", self._on_transcribed)
        self.session.input.audio = self.caller
        self.session.output.audio = self.earpiece
        self._opened_at = time.time()
        try:
            await asyncio.wait_for(self.session.start(self.agent), self.start_timeout)
        except TimeoutError:
            raise PhoneLineTimeoutError(
                f"the agent session did not start within {self.start_timeout:.0f} s; "
                "check that its models load (VAD, local voices) and nothing blocks the loop"
            ) from None

    async def aclose(self) -> None:
        self.caller.close()
        try:
            await asyncio.wait_for(self.session.aclose(), 15.0)
        except TimeoutError:
            log.warning("phone_line.close_timeout", seconds=15.0)
        finally:
            await self.earpiece.aclose()
            self.session.off("agent_state_changed", self._on_agent_state)
            self.session.off("conversation_item_added", self._on_item)
            self.session.off("user_input_transcribed", self._on_transcribed)

    # -- events ------------------------------------------------------------------------------
    def _poke(self) -> None:
        self._last_change = time.monotonic()
        self._changed.set()

    def _on_agent_state(self, ev: AgentStateChangedEvent) -> None:
        self.agent_state = ev.new_state
        self._poke()

    def _on_item(self, ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if isinstance(item, llm.ChatMessage) and item.role in ("user", "assistant"):
            self._items.append(item)
            self.transcript.append((item.role, item.text_content or ""))
        self._poke()

    def _on_transcribed(self, ev: UserInputTranscribedEvent) -> None:
        if ev.is_final and ev.transcript.strip():
            self._finals.append(ev.transcript.strip())
        self._poke()

    async def _wait(self, predicate: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``predicate()`` holds or the monotonic ``deadline`` passes."""
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            if predicate():
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
        return True

    # -- the call -----------------------------------------------------------------------------
    async def listen(self, *, timeout: float | None = None) -> AgentTurn:
        """The agent's next turn without the caller saying anything (e.g. its greeting)."""
        return await self._collect_turn(
            said="", spoke_at=None, timeout=timeout, mark=self._after_last_turn
        )

    async def say(self, text: str, *, timeout: float | None = None) -> AgentTurn:
        """Speak ``text`` as the caller once the agent is quiet; return the agent's reply."""
        if not text.strip():
            raise ValueError("the caller must say something; give a non-empty sentence")
        await self._until_quiet()
        pcm, rate = await asyncio.to_thread(self._voice, text)
        pcm = await asyncio.to_thread(resample, pcm, rate, self.caller.sample_rate)
        mark = self._mark()
        speech_s = pcm.size / self.caller.sample_rate
        done = self.caller.speak(pcm)
        tail_s = trailing_silence(pcm, self.caller.sample_rate)
        try:
            sent_at = await asyncio.wait_for(done, speech_s / self.speed + 10.0)
        except TimeoutError:
            raise PhoneLineTimeoutError(
                f"the session stopped reading the caller's audio while the caller said {text!r}; "
                "is the session still running?"
            ) from None
        # latency counts from the end of the caller's voice, not of the audio's trailing silence
        spoke_at = sent_at - tail_s / self.speed
        return await self._collect_turn(said=text, spoke_at=spoke_at, timeout=timeout, mark=mark)

    async def type(self, text: str, *, timeout: float | None = None) -> AgentTurn:
        """A text turn: the caller's words reach the LLM without STT; the reply is still spoken."""
        if not text.strip():
            raise ValueError("the caller must type something; give a non-empty sentence")
        await self._until_quiet()
        mark = self._mark()
        sent_at = time.time()
        self.session.generate_reply(user_input=text)
        return await self._collect_turn(said=text, spoke_at=sent_at, timeout=timeout, mark=mark)

    # -- turn collection ------------------------------------------------------------------------
    def _mark(self) -> tuple[int, int, int]:
        return len(self.earpiece.segments), len(self._items), len(self._finals)

    async def _until_quiet(self) -> None:
        deadline = time.monotonic() + self.turn_timeout
        ok = await self._wait(
            lambda: (
                self.agent_state in ("listening", "idle")
                and not self.earpiece.playing
                and not self.caller.speaking
            ),
            deadline,
        )
        if not ok:
            raise PhoneLineTimeoutError(
                f"the agent was still {self.agent_state} after {self.turn_timeout:.0f} s; "
                "the previous turn never ended"
            )

    async def _collect_turn(
        self,
        *,
        said: str,
        spoke_at: float | None,
        timeout: float | None,
        mark: tuple[int, int, int],
    ) -> AgentTurn:
        seg0, item0, finals0 = mark
        begun = time.monotonic()
        reply_deadline = begun + (timeout if timeout is not None else self.reply_timeout)

        def new_segments() -> list[_Segment]:
            return self.earpiece.segments[seg0:]

        def new_items(role: str) -> list[llm.ChatMessage]:
            return [i for i in self._items[item0:] if i.role == role]

        def answered_without_audio() -> bool:
            # the agent committed a reply but nothing played: a turn the caller never heard
            return (
                bool(new_items("assistant"))
                and self.agent_state in ("listening", "idle")
                and time.monotonic() - self._last_change >= self.settle_s
            )

        started = await self._wait(
            lambda: bool(new_segments()) or answered_without_audio(), reply_deadline
        )

        def build(error: str | None = None) -> AgentTurn:
            return self._build_turn(said, spoke_at, new_segments(), item0, finals0, error)

        if not started:
            heard = " / ".join(self._finals[finals0:]) or "nothing"
            message = (
                f"the agent did not answer within {reply_deadline - begun:.0f} s "
                f"(caller said {said!r}; agent heard {heard!r}; agent is {self.agent_state})"
            )
            turn = build(message)
            self.turns.append(turn)
            self._after_last_turn = self._mark()
            raise PhoneLineTimeoutError(message, turn)

        turn_deadline = time.monotonic() + self.turn_timeout

        def turn_over() -> bool:
            return (
                self.agent_state in ("listening", "idle")
                and not self.earpiece.playing
                and time.monotonic() - self._last_change >= self.settle_s / self.speed
            )

        if not await self._wait(turn_over, turn_deadline):
            message = (
                f"the agent's turn did not end within {self.turn_timeout:.0f} s "
                f"(agent is {self.agent_state})"
            )
            turn = build(message)
            self.turns.append(turn)
            self._after_last_turn = self._mark()
            raise PhoneLineTimeoutError(message, turn)
        turn = build()
        self.turns.append(turn)
        self._after_last_turn = self._mark()
        log.debug(
            "phone_line.turn",
            index=turn.index,
            said=said,
            heard=turn.heard,
            text=turn.text,
            latency_s=turn.latency_s,
        )
        return turn

    def _build_turn(
        self,
        said: str,
        spoke_at: float | None,
        segments: list[_Segment],
        item0: int,
        finals0: int,
        error: str | None,
    ) -> AgentTurn:
        items = self._items[item0:]
        frames = [f for s in segments for f in s.frames]
        audio = np.concatenate([f.pcm for f in frames]) if frames else np.zeros(0, dtype=np.int16)
        gaps = [g for s in segments for g in s.underruns]
        for before, after in itertools.pairwise(segments):
            if before.frames:
                ends = before.frames[-1].starts_at + before.frames[-1].pcm.size / (
                    self.earpiece.rate * self.speed
                )
                gaps.append(max(0.0, after.started_at - ends))
        heard_items = [i.text_content or "" for i in items if i.role == "user"]
        heard = " ".join(heard_items) if heard_items else " ".join(self._finals[finals0:])
        return AgentTurn(
            index=len(self.turns),
            said=said,
            heard=heard.strip(),
            text=" ".join(i.text_content or "" for i in items if i.role == "assistant").strip(),
            audio=audio,
            sample_rate=self.earpiece.rate,
            latency_s=(segments[0].started_at - spoke_at) if segments and spoke_at else None,
            playout_gaps_s=[round(g, 3) for g in gaps if g > 0.0],
            interrupted=any(s.interrupted for s in segments),
            error=error,
        )

    # -- recordings ---------------------------------------------------------------------------
    def agent_track(self) -> Int16Array:
        """The agent's side of the whole call at line time (silences included)."""
        return self.earpiece.agent_track(self._opened_at)

    def caller_track(self) -> tuple[Int16Array, int]:
        """The caller's side of the whole call, aligned with :meth:`agent_track`."""
        rate = self.caller.sample_rate
        parts = self.caller.caller_track()
        if not parts:
            return np.zeros(0, dtype=np.int16), rate
        end = max(at + pcm.size / rate / self.speed for at, pcm in parts)
        track = np.zeros(math.ceil((end - self._opened_at) * self.speed * rate), dtype=np.int16)
        for at, pcm in parts:
            start = max(0, round((at - self._opened_at) * self.speed * rate))
            part = pcm[: max(0, track.size - start)]
            track[start : start + part.size] = part
        return track, rate
