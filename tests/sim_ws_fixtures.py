"""Helpers for the WebSocket simulator tests (Deepgram, Cartesia, ElevenLabs).

The tests drive the real LiveKit plugins against the simulators; these helpers collect what a
plugin returns (audio or transcripts) together with the error it raised, so each test can
assert both.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents import APIConnectOptions, stt, tts

from plugins.local.audio import rms_dbfs, silence
from plugins.local.sphinx_stt import SphinxEngine
from plugins.sim.tts_audio import speak

Pcm = npt.NDArray[np.int16]


def fast(timeout: float = 1.0) -> APIConnectOptions:
    """No plugin retries and a short timeout, so a hang fails in about ``timeout`` seconds."""
    return APIConnectOptions(max_retry=0, timeout=timeout, retry_interval=0.0)


@dataclass
class TtsResult:
    frames: list[rtc.AudioFrame] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def sample_rate(self) -> int:
        return self.frames[0].sample_rate if self.frames else 0

    @property
    def pcm(self) -> Pcm:
        if not self.frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in self.frames])

    @property
    def seconds(self) -> float:
        return self.pcm.size / self.sample_rate if self.frames else 0.0

    @property
    def loudness_dbfs(self) -> float:
        return rms_dbfs(self.pcm)


async def run_tts(
    engine: tts.TTS, text: str, *, streaming: bool, conn: APIConnectOptions | None = None
) -> TtsResult:
    """Synthesize ``text`` with the real plugin; keep the frames and the error, if any."""
    result = TtsResult()
    opts = conn or fast()
    stream: tts.ChunkedStream | tts.SynthesizeStream
    if streaming:
        stream = engine.stream(conn_options=opts)
        stream.push_text(text)
        stream.end_input()
    else:
        stream = engine.synthesize(text, conn_options=opts)
    try:
        async with stream:
            async for ev in stream:
                result.frames.append(ev.frame)
                timed = ev.frame.userdata.get("lk.timed_transcripts") or []
                result.words.extend(str(w).strip() for w in timed)
    except Exception as e:
        result.error = e
    return result


def transcribe(pcm: Pcm, sample_rate: int) -> list[str]:
    return SphinxEngine.shared().transcribe(pcm, sample_rate).split()


def words_of(text: str) -> list[str]:
    return [w.strip(".,!?").lower() for w in text.split()]


def overlap(heard: list[str], said: list[str]) -> float:
    """Share of the said words that were heard (order-insensitive)."""
    heard_set = {w.lower().strip(".,!?") for w in heard}
    return sum(1 for w in said if w in heard_set) / max(1, len(said))


@functools.lru_cache(maxsize=8)
def spoken(text: str, sample_rate: int = 16000, lead_s: float = 0.3, tail_s: float = 1.2) -> Pcm:
    """Speech of ``text`` with silence around it, as a caller's microphone would give it."""
    return np.concatenate(
        [silence(lead_s, sample_rate), speak(text, sample_rate), silence(tail_s, sample_rate)]
    )


def frames_of(pcm: Pcm, sample_rate: int = 16000, frame_ms: int = 20) -> Iterator[rtc.AudioFrame]:
    step = sample_rate * frame_ms // 1000
    for i in range(0, pcm.size, step):
        chunk = pcm[i : i + step]
        yield rtc.AudioFrame(chunk.tobytes(), sample_rate, 1, chunk.size)


@dataclass
class SttResult:
    events: list[stt.SpeechEvent] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def finals(self) -> list[str]:
        return [
            ev.alternatives[0].text
            for ev in self.events
            if ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT and ev.alternatives
        ]

    def kinds(self) -> list[stt.SpeechEventType]:
        return [ev.type for ev in self.events]


async def consume(stream: stt.RecognizeStream, result: SttResult) -> None:
    try:
        async for ev in stream:
            result.events.append(ev)
    except Exception as e:
        result.error = e


async def run_stt(
    engine: stt.STT,
    pcm: Pcm,
    *,
    conn: APIConnectOptions | None = None,
    utterances: int = 1,
    deadline_s: float = 20,
) -> SttResult:
    """Stream ``pcm`` through the real plugin as a live call would, and collect its events.

    The stream is left open (a caller on a live call does not end it), so errors the plugin
    would swallow while closing still surface; collection stops at the error, after
    ``utterances`` END_OF_SPEECH events, or at ``deadline_s``.
    """
    result = SttResult()
    stream = engine.stream(conn_options=conn or fast(2.0))
    reader = asyncio.create_task(consume(stream, result))
    for frame in frames_of(pcm):
        stream.push_frame(frame)
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline_s
    try:
        while not reader.done() and loop.time() < until:
            if result.kinds().count(stt.SpeechEventType.END_OF_SPEECH) >= utterances:
                break
            await asyncio.wait({reader}, timeout=0.05)
    finally:
        await stream.aclose()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return result


def sim_tasks() -> list[asyncio.Task[object]]:
    """Running tasks whose await chain is inside plugins/sim (a leak once a simulator closed)."""
    leaked = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        awaitable: object = task.get_coro()
        while awaitable is not None:
            code = getattr(awaitable, "cr_code", None) or getattr(awaitable, "gi_code", None)
            if code is not None and "/plugins/sim/" in code.co_filename:
                leaked.append(task)
                break
            awaitable = getattr(awaitable, "cr_await", None) or getattr(
                awaitable, "gi_yieldfrom", None
            )
    return leaked


def load_engines() -> None:
    """Load the local voice and recognizer before a test starts its clock."""
    from plugins.local.hibari_tts import HibariEngine

    HibariEngine.shared()
    SphinxEngine.shared()
