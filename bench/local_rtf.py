"""How fast are the local providers on this machine, and what does LiveKit's interface cost?

For each local voice and the local recognisers this prints the real-time factor (processing time
divided by audio time; lower is faster, 1.0 is "just keeps up") of the bare engine and of the
LiveKit provider built on it, so the ratio column is the interface's overhead. For hibari
streaming it prints the time to first audio of our sentence-streaming ``stream()`` against stock
LiveKit's way of streaming a TTS that cannot (``tts.StreamAdapter`` over ``synthesize()``) and
against waiting for the whole reply (the bare engine on the full text). Figures are medians.

Run from the repo root: ``.venv/bin/python -m bench.local_rtf [--runs 5]``. The table is also
written to ``bench/results/local_rtf.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from livekit import rtc
from livekit.agents import stt, tts

from plugins.local.audio import Int16Array, resample
from plugins.local.espeak_tts import EspeakEngine, EspeakTTS
from plugins.local.hibari_tts import HibariEngine, HibariTTS
from plugins.local.pcm_tts import EngineTTS, SpeechEngine
from plugins.local.sphinx_stt import SphinxEngine, SphinxSTT
from plugins.local.whisper_stt import WhisperEngine, WhisperOptions, WhisperSTT

REPLY = (
    "Thanks for calling Acme Motors, this is the sales desk. "
    "We have a special offer on the new model this month, with free servicing for two years. "
    "Would you like me to book a test drive for you this week? "
    "I can also send the full price list to your email address."
)
RESULTS = Path(__file__).resolve().parent / "results" / "local_rtf.txt"


def median_of(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


async def amedian_of(runs: int, measure: Callable[[], Awaitable[float]]) -> float:
    return statistics.median([await measure() for _ in range(runs)])


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def provider_seconds(voice: EngineTTS) -> tuple[float, float]:
    """Wall time and audio seconds of one full ``synthesize()`` through LiveKit."""
    start = time.perf_counter()
    audio = 0.0
    async for ev in voice.synthesize(REPLY):
        audio += ev.frame.duration
    return time.perf_counter() - start, audio


async def time_to_first_audio(make_stream: Callable[[], tts.SynthesizeStream]) -> float:
    """Push the reply word by word (an LLM writing fast), time the first audio frame."""
    stream = make_stream()
    start = time.perf_counter()
    for token in REPLY.split(" "):
        stream.push_text(token + " ")
    stream.end_input()
    try:
        async for _ in stream:
            return time.perf_counter() - start
        raise RuntimeError("the stream produced no audio")
    finally:
        await stream.aclose()


def to_frames(pcm: Int16Array, rate: int) -> list[rtc.AudioFrame]:
    step = rate // 100
    return [
        rtc.AudioFrame(pcm[i : i + step].tobytes(), rate, 1, len(pcm[i : i + step]))
        for i in range(0, len(pcm), step)
    ]


async def stream_recognition_seconds(frames: list[rtc.AudioFrame]) -> float:
    """Audio pushed as fast as possible; time until the recogniser has emitted everything."""
    stream = SphinxSTT().stream()
    start = time.perf_counter()
    for frame in frames:
        stream.push_frame(frame)
    stream.end_input()
    finals = 0
    async for ev in stream:
        finals += ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    elapsed = time.perf_counter() - start
    await stream.aclose()
    if not finals:
        raise RuntimeError("the recogniser produced no transcript")
    return elapsed


async def run(runs: int) -> list[str]:
    rows: list[str] = []
    load = {
        "hibari": timed(HibariEngine.shared),
        "espeak": timed(EspeakEngine.shared),
        "sphinx": timed(SphinxEngine.shared),
    }
    hibari, espeak, sphinx = HibariEngine.shared(), EspeakEngine.shared(), SphinxEngine.shared()

    rows.append(f"{'provider':<28}{'engine RTF':>12}{'LiveKit RTF':>13}{'ratio':>8}{'load s':>8}")
    voices: list[tuple[str, SpeechEngine, EngineTTS, str]] = [
        ("local-tts (hibari)", hibari, HibariTTS(), "hibari"),
        ("free-tts (espeak-ng)", espeak, EspeakTTS(), "espeak"),
    ]
    for name, engine, voice, key in voices:
        audio_s = engine.synthesize(REPLY).size / engine.sample_rate

        def bare_engine(e: SpeechEngine = engine) -> float:
            return timed(lambda: e.synthesize(REPLY))

        async def through_livekit(v: EngineTTS = voice) -> float:
            wall, audio = await provider_seconds(v)
            return wall / audio

        engine_rtf = median_of(runs, bare_engine) / audio_s

        lk_rtf = await amedian_of(runs, through_livekit)
        rows.append(
            f"{name:<28}{engine_rtf:>12.4f}{lk_rtf:>13.4f}{lk_rtf / engine_rtf:>8.2f}"
            f"{load[key]:>8.2f}"
        )

    speech = hibari.synthesize(REPLY)
    gap = np.zeros(hibari.sample_rate // 2, dtype=np.int16)
    call_audio = np.concatenate([gap, speech, gap])
    audio_s = call_audio.size / hibari.sample_rate
    room_audio = resample(call_audio, hibari.sample_rate, 48000)
    frames = to_frames(room_audio, 48000)
    engine_rtf = (
        median_of(runs, lambda: timed(lambda: sphinx.transcribe(call_audio, hibari.sample_rate)))
        / audio_s
    )

    async def recognize_rtf() -> float:
        start = time.perf_counter()
        await SphinxSTT().recognize(frames)
        return (time.perf_counter() - start) / audio_s

    async def stream_rtf() -> float:
        return await stream_recognition_seconds(frames) / audio_s

    rec = await amedian_of(runs, recognize_rtf)
    streamed = await amedian_of(runs, stream_rtf)
    rows.append(
        f"{'free-stt recognize()':<28}{engine_rtf:>12.4f}{rec:>13.4f}{rec / engine_rtf:>8.2f}"
        f"{load['sphinx']:>8.2f}"
    )
    rows.append(
        f"{'free-stt stream()':<28}{engine_rtf:>12.4f}{streamed:>13.4f}"
        f"{streamed / engine_rtf:>8.2f}{'':>8}"
    )

    # local-stt on the same audio, as one utterance (its default options, no vocabulary prompt)
    whisper_load = timed(lambda: WhisperEngine.shared(WhisperOptions()))
    whisper = WhisperEngine.shared(WhisperOptions())
    whisper_rtf = (
        median_of(runs, lambda: timed(lambda: whisper.transcribe(call_audio, hibari.sample_rate)))
        / audio_s
    )

    async def whisper_recognize_rtf() -> float:
        start = time.perf_counter()
        await WhisperSTT().recognize(frames)
        return (time.perf_counter() - start) / audio_s

    whisper_rec = await amedian_of(runs, whisper_recognize_rtf)
    rows.append(
        f"{'local-stt recognize()':<28}{whisper_rtf:>12.4f}{whisper_rec:>13.4f}"
        f"{whisper_rec / whisper_rtf:>8.2f}{whisper_load:>8.2f}"
    )

    # interleaved, so load from anything else on the machine hits both sides alike
    ours_s: list[float] = []
    stock_s: list[float] = []
    await time_to_first_audio(HibariTTS().stream)  # warm-up
    for _ in range(runs * 4):
        ours_s.append(await time_to_first_audio(HibariTTS().stream))
        stock_s.append(await time_to_first_audio(tts.StreamAdapter(tts=HibariTTS()).stream))
    ours, stock = statistics.median(ours_s), statistics.median(stock_s)
    whole = median_of(runs, lambda: timed(lambda: hibari.synthesize(REPLY)))
    rows += [
        "",
        f"hibari time to first audio, {len(REPLY.split())}-word reply pushed word by word "
        f"(median of {runs * 4}):",
        f"{'  HibariTTS.stream() (ours)':<48}{ours * 1000:>8.1f} ms",
        f"{'  tts.StreamAdapter(HibariTTS) (stock LiveKit)':<48}{stock * 1000:>8.1f} ms"
        f"   ratio ours/stock {ours / stock:.2f}",
        f"{'  whole reply, no streaming (bare engine)':<48}{whole * 1000:>8.1f} ms"
        f"   ratio ours/whole {ours / whole:.2f}",
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="repetitions per figure (median)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    header = [
        f"local providers, median of {args.runs} runs; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "RTF = processing time / audio time (lower is faster)",
        "",
    ]
    load_before = os.getloadavg()[0]
    table = header + asyncio.run(run(args.runs))
    table += [
        "",
        f"load average (1 min): {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end",
    ]
    text = "\n".join(table) + "\n"
    print(text, end="")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
