"""Word error rate and real-time factor of each local recogniser on telephone speech made here.

Callers are synthesized by the local voices (hibari at three speaking rates, eSpeak NG in
several variants), then passed through a telephone channel
(:func:`plugins.sim.telephone.phone_channel`: 8 kHz, 300-3400 Hz band-pass, G.711 mu-law, light
white noise at 30 dB SNR, the voice 6 dB below full scale; and a quiet line 26 dB down). Each
utterance is recognised through the real provider, guarded as a call uses it
(:func:`agent.transcribe.open_recogniser`, the ``transcribe`` command's path), and scored with
the word error rate against the sentence spoken (numbers and punctuation normalised). The
real-time factor is recognition time over audio duration, per utterance.

It also measures what a caller waits for on ``local-stt`` in a call: the chain's
``StreamAdapter`` with Silero VAD, fed a 3 s utterance in real time, from the last voiced frame
to the final transcript (most of it is the VAD's silence window).

Run: ``.venv/bin/python -m bench.stt_accuracy [--quick]``; writes ``bench/results/stt_accuracy.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plugins.local.audio import Int16Array

RESULTS = Path(__file__).resolve().parent / "results" / "stt_accuracy.md"

SENTENCES = (
    "Hi, I would like to know your pricing for the premium plan.",
    "Can you send me the details by email?",
    "My name is Sarah Johnson and I run a small bakery.",
    "We have about twenty employees in two locations.",
    "I am interested but I need to talk to my partner first.",
    "Could we book a call for Tuesday afternoon?",
    "What does the installation cost?",
    "Please call me back tomorrow morning.",
    "Is there a free trial?",
    "My phone number is five five five, one two three, four five six seven.",
)
QUICK_SENTENCES = SENTENCES[:5]

# the callers: (label, engine, option); hibari ships one voice, spoken at three rates
VOICES: tuple[tuple[str, str, str], ...] = (
    ("hibari 1.0x", "hibari", "1.0"),
    ("hibari 0.85x", "hibari", "0.85"),
    ("hibari 1.2x", "hibari", "1.2"),
    ("espeak en-us", "espeak", "en-us"),
    ("espeak en (British)", "espeak", "en"),
    ("espeak en-us+f3", "espeak", "en-us+f3"),
)
QUICK_VOICES = VOICES[:2] + VOICES[3:4]
LINES: tuple[tuple[str, float], ...] = (("phone", -6.0), ("quiet phone", -26.0))
RECOGNISERS = ("local-stt", "free-stt")

_NUMBERS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
    "7": "seven", "8": "eight", "9": "nine", "20": "twenty",
}  # fmt: skip


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation; digits spelled out (Whisper writes "555")."""
    words: list[str] = []
    for token in re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split():
        if token in _NUMBERS:
            words.append(_NUMBERS[token])
        elif token.isdigit():
            words.extend(_NUMBERS[d] for d in token)
        else:
            words.append(token)
    return words


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev_diag, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev_diag, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, prev_diag + (0 if r == h else 1)),
            )
    return row[-1]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total word edits over total reference words."""
    errors = sum(
        edit_distance(normalize_words(r), normalize_words(h))
        for r, h in zip(references, hypotheses, strict=True)
    )
    words = sum(len(normalize_words(r)) for r in references)
    return errors / max(words, 1)


def synthesize(engine: str, option: str, text: str) -> tuple[Int16Array, int]:
    if engine == "hibari":
        from plugins.local.hibari_tts import HibariEngine

        voice = HibariEngine.shared()
        return voice.synthesize(text, speed=float(option)), voice.sample_rate
    from plugins.local.espeak_tts import EspeakEngine

    espeak = EspeakEngine.shared()
    return espeak.synthesize(text, voice=option), espeak.sample_rate


@dataclass
class Score:
    recogniser: str
    voice: str
    line: str
    refs: list[str] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)
    rtf: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def wer(self) -> float:
        return word_error_rate(self.refs, self.hyps)


async def score_all(
    sentences: Sequence[str], voices: Sequence[tuple[str, str, str]]
) -> list[Score]:
    from livekit.agents import APIError

    from agent.settings import load_settings
    from agent.transcribe import open_recogniser
    from plugins.sim.telephone import PHONE_RATE, phone_channel

    # The guard stays in the path (classification, breaker, metering) with a deadline wide
    # enough that a loaded machine measures accuracy, not its own queueing; a failure still
    # counts, as an empty transcript.
    workdir = Path(tempfile.mkdtemp(prefix="stt-accuracy-"))
    settings = load_settings(data_dir=workdir, stt_first_result_timeout=30.0)
    audio: dict[tuple[str, str, str], Int16Array] = {}
    for label, engine, option in voices:
        for n, sentence in enumerate(sentences):
            pcm, rate = synthesize(engine, option, sentence)
            for line, level in LINES:
                audio[(label, line, sentence)] = phone_channel(pcm, rate, level_db=level, seed=n)
    scores: list[Score] = []
    for name in RECOGNISERS:
        recogniser = await open_recogniser(settings, name)
        try:
            await recogniser.transcribe(audio[next(iter(audio))], PHONE_RATE)  # warm up
            for label, _engine, _option in voices:
                for line, _level in LINES:
                    score = Score(name, label, line)
                    for sentence in sentences:
                        pcm = audio[(label, line, sentence)]
                        started = time.perf_counter()
                        try:
                            text = await recogniser.transcribe(pcm, PHONE_RATE)
                        except APIError as e:
                            score.failures.append(str(e))
                            text = ""
                        score.rtf.append((time.perf_counter() - started) / (pcm.size / PHONE_RATE))
                        score.refs.append(sentence)
                        score.hyps.append(text)
                    scores.append(score)
                    print(
                        f"  {name:<9} {label:<16} {line:<11} WER={score.wer:.3f} "
                        f"RTF={statistics.median(score.rtf):.3f}",
                        flush=True,
                    )
        finally:
            await recogniser.aclose()
    return scores


async def end_of_speech_latency(
    repeats: int, min_silence_s: float = 0.55
) -> list[tuple[float, float]]:
    """(last voiced frame -> final, VAD end of speech -> final) for a ~3 s utterance on
    local-stt inside LiveKit's StreamAdapter with Silero VAD, fed at real-time pace."""
    from livekit.agents import stt
    from livekit.plugins import silero

    from plugins.local.audio import resample
    from plugins.local.whisper_stt import WhisperSTT
    from plugins.sim.telephone import PHONE_RATE, phone_channel

    pcm, rate = synthesize(
        "hibari", "1.0", "Hi, I would like to know your pricing for the premium plan."
    )
    phone = resample(phone_channel(pcm, rate), PHONE_RATE, 16000)
    vad = silero.VAD.load(min_silence_duration=min_silence_s)
    adapter = stt.StreamAdapter(stt=WhisperSTT(), vad=vad)
    results = [await _one_utterance(adapter, phone) for _ in range(repeats)]
    await adapter.aclose()
    return [r for r in results if r is not None]


async def _one_utterance(adapter: Any, phone: Int16Array) -> tuple[float, float] | None:
    from livekit import rtc
    from livekit.agents import stt

    chunk = 160  # 10 ms at 16 kHz
    lead = np.zeros(3200, dtype=np.int16)
    audio = np.concatenate([lead, phone, np.zeros(16000 * 2, dtype=np.int16)])
    voiced_end = lead.size + phone.size
    marks: dict[str, float] = {}
    stream = adapter.stream()

    async def feed() -> None:
        started = time.perf_counter()
        for i in range(0, audio.size, chunk):
            part = audio[i : i + chunk]
            stream.push_frame(rtc.AudioFrame(part.tobytes(), 16000, 1, part.size))
            if i + chunk >= voiced_end and "voiced_end" not in marks:
                marks["voiced_end"] = time.perf_counter()
            await asyncio.sleep(max(0.0, started + (i + chunk) / 16000 - time.perf_counter()))
        stream.end_input()

    feeder = asyncio.create_task(feed())
    async for ev in stream:
        if ev.type == stt.SpeechEventType.END_OF_SPEECH:
            marks.setdefault("vad_end", time.perf_counter())
        if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT and ev.alternatives[0].text:
            marks["final"] = time.perf_counter()
            break
    await feeder
    await stream.aclose()
    if "final" not in marks:
        return None
    return (
        marks["final"] - marks["voiced_end"],
        marks["final"] - marks.get("vad_end", marks["final"]),
    )


def report(
    scores: list[Score], latency: dict[float, list[tuple[float, float]]], elapsed_s: float
) -> str:
    lines = [
        "# Local recognisers on telephone speech",
        "",
        f"Command: `.venv/bin/python -m bench.stt_accuracy` ({elapsed_s:.0f} s). Machine: "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"load average at start {os.getloadavg()[0]:.1f} (shared with other work).",
        "",
        "Channel: 8 kHz, 300-3400 Hz band-pass, G.711 mu-law, white noise 30 dB below the voice; "
        "`phone` has the voice 6 dB below full scale, `quiet phone` 26 dB below. Each recogniser "
        "is the real provider built by the chain builder and guarded, as in a call "
        "(`python -m agent transcribe`'s path). RTF = recognition time / audio duration "
        "(median per utterance; local-stt: Whisper tiny.en, beam 1, 2 threads).",
        "",
        "| recogniser | WER (all) | WER phone | WER quiet phone | RTF median | RTF p95 | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in RECOGNISERS:
        mine = [s for s in scores if s.recogniser == name]
        if not mine:
            continue
        refs = [r for s in mine for r in s.refs]
        hyps = [h for s in mine for h in s.hyps]
        by_line = {
            line: word_error_rate(
                [r for s in mine if s.line == line for r in s.refs],
                [h for s in mine if s.line == line for h in s.hyps],
            )
            for line, _ in LINES
        }
        rtf = [x for s in mine for x in s.rtf]
        lines.append(
            f"| {name} | **{word_error_rate(refs, hyps):.3f}** | {by_line['phone']:.3f} | "
            f"{by_line['quiet phone']:.3f} | {statistics.median(rtf):.3f} | "
            f"{float(np.percentile(rtf, 95)):.3f} | {sum(len(s.failures) for s in mine)} |"
        )
    lines += ["", "By voice (phone line):", "", "| voice | " + " | ".join(RECOGNISERS) + " |"]
    lines.append("|---" * (len(RECOGNISERS) + 1) + "|")
    for voice in dict.fromkeys(s.voice for s in scores):
        cells = []
        for name in RECOGNISERS:
            match = [s for s in scores if s.recogniser == name and s.voice == voice]
            phone = [s for s in match if s.line == "phone"]
            cells.append(f"{phone[0].wer:.3f}" if phone else "-")
        lines.append(f"| {voice} | " + " | ".join(cells) + " |")
    worst = [s for s in scores if s.recogniser == "local-stt" and s.line == "phone"]
    if worst:
        sample = max(worst, key=lambda s: s.wer)
        lines += ["", f"Hardest phone-line voice for local-stt ({sample.voice}):", ""]
        for ref, hyp in list(zip(sample.refs, sample.hyps, strict=True))[:3]:
            lines.append(f"- said: {ref!r} -> heard: {hyp!r}")
    if latency:
        lines += [
            "",
            "End of speech to final transcript, local-stt in LiveKit's StreamAdapter with Silero "
            "VAD (a 3.7 s phone utterance fed in real time):",
            "",
            "| VAD min silence s | runs | last voiced frame -> final, median s | max s | "
            "VAD end of speech -> final, median s |",
            "|---|---|---|---|---|",
        ]
        for silence_s, runs in latency.items():
            if not runs:
                lines.append(f"| {silence_s} | 0 | - | - | - |")
                continue
            voiced = [a for a, _ in runs]
            after = [b for _, b in runs]
            lines.append(
                f"| {silence_s} | {len(runs)} | **{statistics.median(voiced):.2f}** | "
                f"{max(voiced):.2f} | {statistics.median(after):.2f} |"
            )
        lines += [
            "",
            "0.55 s is Silero's default silence window (what the worker's VAD uses); the rest is "
            "recognition, which grows with the machine's load (see the load average above).",
        ]
    return "\n".join(lines) + "\n"


async def bench(args: argparse.Namespace) -> str:
    started = time.monotonic()
    sentences = QUICK_SENTENCES if args.quick else SENTENCES
    voices = QUICK_VOICES if args.quick else VOICES
    scores = await score_all(sentences, voices)
    repeats = 2 if args.quick else 5
    latency = {s: await end_of_speech_latency(repeats, s) for s in (0.55, 0.25)}
    return report(scores, latency, time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description="WER and RTF of the local recognisers.")
    parser.add_argument("--quick", action="store_true", help="fewer sentences and voices")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    text = asyncio.run(bench(args))
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
