"""A caller's side of one turn, measured: what ``bench.midstream`` and its tests share.

An LLM answer read as it streams (:func:`answer`), a text pushed into a TTS stream the way an
LLM writes it (:func:`speak`), real speech fed to a recogniser at line pace
(:func:`recognize`, :func:`speech_frames`), and the words the caller got (:func:`transcribe`,
:func:`words`). It lives with the benchmark, which must not depend on the tests; the
mid-stream tests import it from here.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import llm, stt, tts, utils

from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.spec import ProviderSpec

Voices = tuple[CartesiaSimulator, ElevenLabsSimulator]

_WORD = re.compile(r"[a-z0-9']+")


@contextlib.asynccontextmanager
async def two_voices(*, connect_delay_s: float = 0.0) -> AsyncIterator[Voices]:
    """Cartesia then ElevenLabs, each on its simulator, inside LiveKit's HTTP context: the
    two WebSocket voices every TTS failover case speaks through."""
    async with (
        utils.http_context.open(),
        CartesiaSimulator(connect_delay_s=connect_delay_s) as primary,
        ElevenLabsSimulator() as backup,
    ):
        yield primary, backup


def voice_specs(voices: Voices) -> list[ProviderSpec]:
    """The TTS chain over :func:`two_voices`, Cartesia first."""
    primary, backup = voices
    return [
        ProviderSpec("tts", "cartesia", base_url=primary.base_url, api_key="sim-key"),
        ProviderSpec("tts", "elevenlabs", base_url=backup.base_url, api_key="sim-key"),
    ]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class Heard:
    """What a caller got from one LLM answer: the text, and when each piece arrived."""

    text: str = ""
    times: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def max_gap_s(self) -> float:
        return max((b - a for a, b in itertools.pairwise(self.times)), default=0.0)


async def answer(model: llm.LLM[Any], question: str, clock: Any) -> Heard:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=question)
    heard = Heard()
    try:
        async with model.chat(chat_ctx=ctx) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    heard.text += chunk.delta.content
                    heard.times.append(clock())
    except Exception as e:
        heard.error = f"{type(e).__name__}: {e}"
    return heard


@dataclass
class Spoken:
    """What a caller got from one utterance: the audio, and when each audible frame came."""

    pcm: np.ndarray
    sample_rate: int
    audible_times: list[float]
    error: str | None = None

    @property
    def max_gap_s(self) -> float:
        t = self.audible_times
        return max((b - a for a, b in itertools.pairwise(t)), default=0.0)


async def speak(model: tts.TTS[Any], text: str, clock: Any, *, chunk: int = 12) -> Spoken:
    """Push ``text`` into a TTS stream a few characters at a time, as an LLM would."""
    pieces: list[np.ndarray] = []
    times: list[float] = []
    error = None
    try:
        async with model.stream() as stream:
            for i in range(0, len(text), chunk):
                stream.push_text(text[i : i + chunk])
            stream.end_input()
            async for audio in stream:
                data = np.frombuffer(audio.frame.data, dtype=np.int16)
                pieces.append(data.copy())
                if data.size and int(np.abs(data).max()) > 64:
                    times.append(clock())
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    pcm = np.concatenate(pieces) if pieces else np.zeros(0, np.int16)
    return Spoken(pcm, model.sample_rate, times, error)


def transcribe(pcm: np.ndarray, sample_rate: int) -> str:
    from plugins.local.sphinx_stt import SphinxEngine

    return SphinxEngine.shared().transcribe(pcm, sample_rate) if pcm.size else ""


def speech_frames(text: str, rate: int = 16000) -> list[rtc.AudioFrame]:
    """Real speech (hibari) with lead-in and trailing silence, as 20 ms frames at ``rate``."""
    from plugins.local.hibari_tts import HibariEngine

    engine = HibariEngine.shared()
    pcm = engine.synthesize(text)
    x = np.interp(
        np.arange(0, len(pcm) * rate / engine.sample_rate) * engine.sample_rate / rate,
        np.arange(len(pcm)),
        pcm.astype(np.float32),
    ).astype(np.int16)
    x = np.concatenate([np.zeros(rate // 5, np.int16), x, np.zeros(rate, np.int16)])
    step = rate // 50
    return [
        rtc.AudioFrame(x[i : i + step].tobytes(), rate, 1, len(x[i : i + step]))
        for i in range(0, len(x) - step + 1, step)
    ]


@dataclass
class Recognized:
    """What a caller's words became: the final transcripts, and when they and the speech came.

    ``speech_end_at`` is when the frame at ``speech_end_s`` of the audio was pushed (the
    caller's last word on the line as paced, sleep drift included), ``final_at`` when the
    last final with words arrived: the turn can be answered from then on, whether or not the
    stream is still open (it stays open for the whole call).
    """

    text: str
    error: str | None
    speech_end_at: float | None = None
    final_at: float | None = None

    @property
    def gap_s(self) -> float | None:
        """The caller's end of speech to the final transcript."""
        if self.speech_end_at is None or self.final_at is None:
            return None
        return max(0.0, self.final_at - self.speech_end_at)


async def recognize_timed(
    model: stt.STT[Any],
    frames: list[rtc.AudioFrame],
    *,
    pace: float = 0.5,
    speech_end_s: float | None = None,
    clock: Any = None,
) -> Recognized:
    """Stream ``frames`` at ``pace`` x real time; the transcripts, and when they came."""
    import asyncio
    import time

    now = clock or time.perf_counter
    finals: list[str] = []
    result = Recognized("", None)
    stream = model.stream()

    async def feed() -> None:
        position = 0.0
        for frame in frames:
            reached = speech_end_s is not None and position >= speech_end_s - 1e-6
            if reached and result.speech_end_at is None:
                result.speech_end_at = now()
            stream.push_frame(frame)
            position += frame.duration
            await asyncio.sleep(frame.duration * pace)  # audio arrives at the line's pace
        if speech_end_s is not None and result.speech_end_at is None:
            result.speech_end_at = now()
        stream.end_input()

    feeder = asyncio.create_task(feed())
    try:
        async for ev in stream:
            final = ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT and ev.alternatives
            if final and ev.alternatives[0].text.strip():
                finals.append(ev.alternatives[0].text.strip())
                result.final_at = now()
    except Exception as e:
        result.error = f"{type(e).__name__}: {e}"
    finally:
        feeder.cancel()
        await stream.aclose()
    result.text = " ".join(finals)
    return result


async def recognize(
    model: stt.STT[Any], frames: list[rtc.AudioFrame], *, pace: float = 0.5
) -> tuple[str, str | None]:
    """Stream ``frames`` at ``pace`` x real time; returns (final transcripts, error)."""
    heard = await recognize_timed(model, frames, pace=pace)
    return heard.text, heard.error


def with_stock_adapters(chains: Any) -> Any:
    """The same chains (``plugins.chain.Chains``: the same guarded members, guards, probers)
    behind LiveKit's stock ``FallbackAdapter`` s, as ``build_chains`` configures ours (no
    retries of the members' own): the baseline the mid-stream benchmark and tests compare
    against. Ours are closed with the chains all the same."""
    import dataclasses

    stock = dataclasses.replace(
        chains,
        stt=stt.FallbackAdapter(chains.stt.members, max_retry_per_stt=0),
        llm=llm.FallbackAdapter(
            chains.llm.members,
            attempt_timeout=chains.llm._attempt_timeout,
            max_retry_per_llm=0,
        ),
        tts=tts.FallbackAdapter(chains.tts.members, max_retry_per_tts=0),
    )
    ours = (chains.stt, chains.llm, chains.tts)
    close = stock.aclose

    async def aclose() -> None:
        await close()
        for adapter in ours:
            await adapter.aclose()

    stock.aclose = aclose
    return stock
