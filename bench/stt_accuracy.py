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

Run: ``.venv/bin/python -m bench.stt_accuracy`` (all voices and sentences; writes
``bench/results/stt_accuracy.md``) or ``--quick`` (3 voices, 5 sentences, under 3 minutes on a
quiet machine; writes ``stt_accuracy_quick.md``). Both end with one ``stt_accuracy: ...`` line.
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
QUICK_RESULTS = RESULTS.with_name("stt_accuracy_quick.md")

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
    from plugins.local.audio import resample_exact
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
            # to 8 kHz without LiveKit's dither, so every run hears the same callers
            narrow = resample_exact(pcm, rate, PHONE_RATE)
            for line, level in LINES:
                audio[(label, line, sentence)] = phone_channel(
                    narrow, PHONE_RATE, level_db=level, seed=n
                )
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


ADAPTERS = ("LiveKit StreamAdapter", "SpeculativeStreamAdapter (ours)")
#: What the latency runs say, timed alone: the 3 s utterance the goal names, then a longer one
#: (Whisper's decode, and so the wait, grows with the words to write).
LATENCY_UTTERANCES = (
    "Could we book a call for Tuesday afternoon at two?",
    "Hi, I would like to know your pricing for the premium plan.",
)
SPECULATION: dict[str, str] = {}  # adapter -> what its speculation did in the latency runs
UTTERANCE_S: dict[str, float] = {}  # utterance -> how long it is said
#: (utterance, adapter) -> (last voiced sample -> final, VAD end of speech -> final) per run
Latency = dict[tuple[str, str], list[tuple[float, float]]]


async def end_of_speech_latency(
    repeats: int, adapter_name: str, sentence: str, min_silence_s: float = 0.55
) -> list[tuple[float, float]]:
    """(last voiced frame -> final, VAD end of speech -> final) for ``sentence`` said once on
    local-stt inside LiveKit's StreamAdapter or ours, with Silero VAD, fed at real-time pace."""
    from livekit.agents import stt
    from livekit.plugins import silero

    from plugins.local.audio import resample_exact
    from plugins.local.speculative_stt import SpeculativeStreamAdapter
    from plugins.local.whisper_stt import WhisperEngine, WhisperSTT
    from plugins.sim.telephone import PHONE_RATE, phone_channel

    pcm, rate = synthesize("hibari", "1.0", sentence)
    narrow = resample_exact(pcm, rate, PHONE_RATE)
    phone = resample_exact(phone_channel(narrow, PHONE_RATE), PHONE_RATE, 16000)
    UTTERANCE_S[sentence] = pcm.size / rate
    vad = silero.VAD.load(min_silence_duration=min_silence_s)
    recogniser = WhisperSTT(options=_whisper_options())
    adapter: stt.StreamAdapter = (
        SpeculativeStreamAdapter(stt=recogniser, vad=vad)
        if adapter_name == ADAPTERS[1]
        else stt.StreamAdapter(stt=recogniser, vad=vad)
    )
    await asyncio.to_thread(WhisperEngine.shared, recogniser.options)  # loaded, as in a call
    results = [await _one_utterance(adapter, phone) for _ in range(repeats)]
    await adapter.aclose()
    if isinstance(adapter, SpeculativeStreamAdapter):
        s = adapter.stats
        SPECULATION[f"{adapter_name}, {UTTERANCE_S[sentence]:.1f} s utterance"] = (
            f"{s.started} speculations, {s.used} finals sent from one, {s.discarded} discarded "
            f"(the caller spoke again), {s.at_end_of_speech} recognised at end of speech only"
        )
    return [r for r in results if r is not None]


async def _one_utterance(adapter: Any, phone: Int16Array) -> tuple[float, float] | None:
    from livekit import rtc
    from livekit.agents import stt

    from plugins.sim.phone_line import trailing_silence

    chunk = 160  # 10 ms at 16 kHz
    lead = np.zeros(3200, dtype=np.int16)
    audio = np.concatenate([lead, phone, np.zeros(16000 * 2, dtype=np.int16)])
    # the caller's last voiced sample, not the end of the synthesized clip's own silence
    voiced_end = lead.size + phone.size - round(trailing_silence(phone, 16000) * 16000)
    marks: dict[str, float] = {}
    finals: list[tuple[float, str]] = []
    stream = adapter.stream()

    async def feed() -> None:
        started = time.perf_counter()
        for i in range(0, audio.size, chunk):
            part = audio[i : i + chunk]
            stream.push_frame(rtc.AudioFrame(part.tobytes(), 16000, 1, part.size))
            if i + chunk >= voiced_end and "voiced_end" not in marks:
                marks["voiced_end"] = started + voiced_end / 16000
            await asyncio.sleep(max(0.0, started + (i + chunk) / 16000 - time.perf_counter()))
        stream.end_input()

    feeder = asyncio.create_task(feed())
    async for ev in stream:
        if ev.type == stt.SpeechEventType.END_OF_SPEECH:
            marks.setdefault("vad_end", time.perf_counter())
        if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT and ev.alternatives[0].text:
            finals.append((time.perf_counter(), ev.alternatives[0].text))
    await feeder
    await stream.aclose()
    # the final that completes the utterance: the first one after the caller's last word (a
    # final at an earlier pause holds only the words before it)
    after = [t for t, _ in finals if t >= marks.get("voiced_end", float("inf"))]
    if not after:
        return None
    final = after[0]
    # negative "after VAD end of speech": the final came before the VAD closed the turn
    return final - marks["voiced_end"], final - marks.get("vad_end", final)


def _whisper_options() -> Any:
    """local-stt's options as a call gets them (the settings, with the domain vocabulary)."""
    from agent.local_speech import whisper_options
    from agent.settings import load_settings

    return whisper_options(load_settings())


def report(
    scores: list[Score],
    latency: Latency,
    elapsed_s: float,
    *,
    quick: bool = False,
    load_before: float = 0.0,
) -> str:
    options = _whisper_options()
    lines = [
        "# Local recognisers on telephone speech",
        "",
        f"Command: `.venv/bin/python -m bench.stt_accuracy{' --quick' if quick else ''}` "
        f"({elapsed_s:.0f} s). Machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, load average {load_before:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at the end (1-minute; the machine may be shared).",
        "",
        "Channel: 8 kHz, 300-3400 Hz band-pass, G.711 mu-law, white noise 30 dB below the voice; "
        "`phone` has the voice 6 dB below full scale, `quiet phone` 26 dB below. Each recogniser "
        "is the real provider built by the chain builder and guarded, as in a call "
        "(`python -m agent transcribe`'s path). RTF = recognition time / audio duration "
        f"(median per utterance; local-stt: Whisper {options.model}, beam {options.beam_size}, "
        f"{options.threads} thread{'s' if options.threads > 1 else ''}, "
        f"{options.compute_type}, {options.window_s} s encoder "
        "window, "
        f"{'the domain vocabulary prompt' if options.prompt else 'no prompt'}).",
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
        from plugins.local.speculative_stt import DEFAULT_SPECULATE_AFTER_S

        lines += [
            "",
            "End of speech to final transcript: local-stt with Silero VAD (0.55 s silence "
            "window, what the worker uses), each phone utterance fed in real time, timed "
            "from the caller's last voiced sample; LiveKit's StreamAdapter and ours in the "
            "same run:",
            "",
            "| utterance | adapter | runs | last voiced sample -> final, median s | max s | "
            "final after the VAD's end of speech, median s |",
            "|---|---|---|---|---|---|",
        ]
        for (sentence, name), runs in latency.items():
            said = f"{UTTERANCE_S.get(sentence, 0):.1f} s: {sentence!r}"
            if not runs:
                lines.append(f"| {said} | {name} | 0 | - | - | - |")
                continue
            voiced = [a for a, _ in runs]
            after = [b for _, b in runs]
            lines.append(
                f"| {said} | {name} | {len(runs)} | **{statistics.median(voiced):.2f}** | "
                f"{max(voiced):.2f} | {statistics.median(after):+.2f} |"
            )
        lines += [
            "",
            "LiveKit's adapter recognises only after the VAD's silence window has closed; ours "
            f"starts when the VAD has counted {DEFAULT_SPECULATE_AFTER_S} s of silence and "
            "sends the final as soon as it "
            "is ready (a negative last column: before the VAD closed the turn), discarding it if "
            "the caller speaks again. Recognition time grows with the machine's load (see the "
            "load average above).",
        ]
        lines += [f"{name}: {text}." for name, text in SPECULATION.items()]
    return "\n".join(lines) + "\n"


def summary_line(scores: list[Score], latency: Latency) -> str:
    """One line for scripts: local-stt's WER (all, hibari, eSpeak), RTF and the latencies
    (``eos_to_final_s`` on the 3 s utterance, ``_long_s`` on the longer one)."""
    mine = [s for s in scores if s.recogniser == "local-stt"]

    def wer(kind: str) -> str:
        chosen = [s for s in mine if s.voice.startswith(kind)]
        refs = [r for s in chosen for r in s.refs]
        hyps = [h for s in chosen for h in s.hyps]
        return f"{word_error_rate(refs, hyps):.3f}" if refs else "-"

    rtf = [x for s in mine for x in s.rtf]

    def median(name: str, sentence: str = LATENCY_UTTERANCES[0]) -> str:
        runs = latency.get((sentence, name)) or []
        return f"{statistics.median(a for a, _ in runs):.2f}" if runs else "-"

    return (
        f"stt_accuracy: local_wer={wer('')} hibari_wer={wer('hibari')} "
        f"espeak_wer={wer('espeak')} rtf_median="
        f"{statistics.median(rtf) if rtf else float('nan'):.3f} "
        f"eos_to_final_s={median(ADAPTERS[1])} stock_eos_to_final_s={median(ADAPTERS[0])} "
        f"eos_to_final_long_s={median(ADAPTERS[1], LATENCY_UTTERANCES[1])} "
        f"load={os.getloadavg()[0]:.1f}"
    )


async def bench(args: argparse.Namespace) -> tuple[str, str]:
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    sentences = QUICK_SENTENCES if args.quick else SENTENCES
    voices = QUICK_VOICES if args.quick else VOICES
    scores = await score_all(sentences, voices)
    repeats = 2 if args.quick else 5
    latency: Latency = {
        (sentence, name): await end_of_speech_latency(repeats, name, sentence)
        for sentence in LATENCY_UTTERANCES
        for name in ADAPTERS
    }
    text = report(
        scores, latency, time.monotonic() - started, quick=args.quick, load_before=load_before
    )
    return text, summary_line(scores, latency)


def main() -> None:
    parser = argparse.ArgumentParser(description="WER and RTF of the local recognisers.")
    parser.add_argument("--quick", action="store_true", help="fewer sentences and voices")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    text, summary = asyncio.run(bench(args))
    print(text)
    if not args.no_write:
        path = QUICK_RESULTS if args.quick else RESULTS
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n" + summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
