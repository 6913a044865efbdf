"""The local floor of every chain: hibari and eSpeak voices, PocketSphinx ears.

Everything here runs the real engines (no mocks): speech synthesized by each local voice is
transcribed by the local recogniser and scored by word error rate, and the LiveKit interfaces
(synthesize, stream, recognize, recognize stream) are driven the way AgentSession drives them.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import stt, tts

from plugins.local.audio import Int16Array, frame_to_mono, is_silent, resample, rms_dbfs
from plugins.local.espeak_tts import EspeakEngine, EspeakTTS
from plugins.local.hibari_tts import HibariEngine, HibariTTS
from plugins.local.pcm_tts import EngineTTS
from plugins.local.sphinx_stt import SphinxEngine, SphinxSTT

EVENT_DEADLINE_S = 20.0  # generous: these are correctness waits, not speed assertions

SENTENCES = [
    "i would like to book an appointment for next tuesday morning",
    "my name is john smith and my phone number is five five five one two three four",
    "we have a special offer on the new model this month",
    "please send me an email with the price list",
]

# Corpus WER ceilings. Measured on this machine: hibari 0.02 (batch), 0.06 (hibari through the
# streaming endpointer, which splits utterances at pauses), eSpeak 0.72. PocketSphinx hears hibari
# almost word for word, so its bounds leave room only for voice randomness; eSpeak's robotic voice
# it mostly mishears, so that bound only proves the audio carries English speech (silence or noise
# scores 1.0).
HIBARI_MAX_WER = 0.25
HIBARI_STREAMED_MAX_WER = 0.30
ESPEAK_MAX_WER = 0.90


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance over words: substitutions + deletions + insertions."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev_diag, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev_diag, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, prev_diag + (0 if r == h else 1)),
            )
    return row[-1]


def corpus_wer(pairs: Sequence[tuple[str, str]]) -> float:
    """Total word edits over total reference words (the standard corpus-level WER)."""
    edits = sum(edit_distance(words(ref), words(hyp)) for ref, hyp in pairs)
    total = sum(len(words(ref)) for ref, _ in pairs)
    return edits / total


@pytest.fixture(scope="module")
def hibari() -> HibariEngine:
    return HibariEngine.shared()


@pytest.fixture(scope="module")
def espeak() -> EspeakEngine:
    return EspeakEngine.shared()


@pytest.fixture(scope="module")
def sphinx() -> SphinxEngine:
    return SphinxEngine.shared()


@pytest.fixture(scope="module")
def hibari_pcm(hibari: HibariEngine) -> dict[str, Int16Array]:
    return {s: hibari.synthesize(s) for s in SENTENCES[:2]}


def to_frames(pcm: Int16Array, sample_rate: int, frame_ms: int = 10) -> list[rtc.AudioFrame]:
    step = sample_rate * frame_ms // 1000
    return [
        rtc.AudioFrame(pcm[i : i + step].tobytes(), sample_rate, 1, len(pcm[i : i + step]))
        for i in range(0, len(pcm), step)
    ]


async def collect_audio(
    events: tts.ChunkedStream | tts.SynthesizeStream,
) -> list[tts.SynthesizedAudio]:
    async def drain() -> list[tts.SynthesizedAudio]:
        return [ev async for ev in events]

    return await asyncio.wait_for(drain(), EVENT_DEADLINE_S)


def joined_pcm(events: Sequence[tts.SynthesizedAudio]) -> Int16Array:
    return np.concatenate([frame_to_mono(ev.frame) for ev in events])


# --- the scoring itself ----------------------------------------------------------------------


def test_wer_counts_substitutions_deletions_and_insertions() -> None:
    assert corpus_wer([("a b c d", "a b c d")]) == 0.0
    assert corpus_wer([("a b c d", "a x c d")]) == 0.25  # substitution
    assert corpus_wer([("a b c d", "a c d")]) == 0.25  # deletion
    assert corpus_wer([("a b c d", "a b b c d")]) == 0.25  # insertion
    assert corpus_wer([("a b", ""), ("c d", "c d")]) == 0.5  # weighted by reference words
    assert corpus_wer([("Hello, there!", "hello there")]) == 0.0  # case and punctuation


# --- engines: speech that the recogniser understands -------------------------------------------


def test_hibari_speech_is_transcribed_back_by_pocketsphinx(
    hibari: HibariEngine, sphinx: SphinxEngine
) -> None:
    pairs = [(s, sphinx.transcribe(hibari.synthesize(s), hibari.sample_rate)) for s in SENTENCES]
    wer = corpus_wer(pairs)
    assert wer <= HIBARI_MAX_WER, f"WER {wer:.2f} > {HIBARI_MAX_WER}: {pairs}"


def test_espeak_speech_is_audible_english_of_plausible_length(
    espeak: EspeakEngine, sphinx: SphinxEngine
) -> None:
    pairs = []
    for sentence in SENTENCES[:3]:  # PocketSphinx searches hard on eSpeak audio: keep it short
        pcm = espeak.synthesize(sentence)
        seconds = pcm.size / espeak.sample_rate
        n_words = len(words(sentence))
        # 150 words per minute is 0.4 s a word; allow for pauses and fast function words
        assert 0.2 * n_words <= seconds <= 0.8 * n_words, (sentence, seconds)
        assert rms_dbfs(pcm) > -35.0, "eSpeak produced (near) silence"
        pairs.append((sentence, sphinx.transcribe(pcm, espeak.sample_rate)))
    wer = corpus_wer(pairs)
    assert wer <= ESPEAK_MAX_WER, f"WER {wer:.2f} > {ESPEAK_MAX_WER}: {pairs}"


def test_engine_sample_rates_match_the_contract(
    hibari: HibariEngine, espeak: EspeakEngine, sphinx: SphinxEngine
) -> None:
    assert hibari.sample_rate == 24000
    assert espeak.sample_rate == 22050
    assert sphinx.sample_rate == 16000
    assert hibari.synthesize("Hello.").dtype == np.int16
    assert espeak.synthesize("Hello.").dtype == np.int16


def test_shared_engines_load_once_across_threads() -> None:
    seen: list[object] = []
    barrier = threading.Barrier(4)

    def grab() -> None:
        barrier.wait()
        seen.extend([HibariEngine.shared(), EspeakEngine.shared(), SphinxEngine.shared()])

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(x) for x in seen}) == 3


def test_espeak_runs_on_the_wheel_library_not_the_system_one(espeak: EspeakEngine) -> None:
    import espeakng_loader

    wheel_dir = str(Path(espeakng_loader.get_library_path()).resolve().parent)
    maps = Path("/proc/self/maps").read_text()
    loaded = {line.split()[-1] for line in maps.splitlines() if "libespeak-ng" in line}
    assert loaded, "libespeak-ng is not mapped into the process"
    assert all(p.startswith(wheel_dir) for p in loaded), loaded


def test_sphinx_hears_nothing_in_silence_and_resamples_any_rate(
    sphinx: SphinxEngine, hibari_pcm: dict[str, Int16Array]
) -> None:
    assert sphinx.transcribe(np.zeros(16000, dtype=np.int16), 16000) == ""
    assert sphinx.transcribe(np.zeros(0, dtype=np.int16), 8000) == ""
    sentence, pcm = next(iter(hibari_pcm.items()))
    at_48k = resample(pcm, 24000, 48000)
    assert corpus_wer([(sentence, sphinx.transcribe(at_48k, 48000))]) <= HIBARI_MAX_WER


def test_engines_reject_bad_input_with_a_clear_message(
    hibari: HibariEngine, espeak: EspeakEngine, sphinx: SphinxEngine
) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        hibari.synthesize(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a str"):
        espeak.synthesize(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="speed"):
        hibari.synthesize("Hi.", speed=9.0)
    with pytest.raises(TypeError, match="int16"):
        sphinx.transcribe(np.zeros(100, dtype=np.float32), 16000)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="numpy int16 array"):
        sphinx.transcribe(b"\0\0" * 100, 16000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D mono"):
        sphinx.transcribe(np.zeros((100, 2), dtype=np.int16), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        sphinx.transcribe(np.zeros(100, dtype=np.int16), 0)
    assert hibari.synthesize("  \n ").size == 0
    assert espeak.synthesize("").size == 0


# --- LiveKit TTS interface ----------------------------------------------------------------------


TTS_CLASSES: list[tuple[type[EngineTTS], int, str, str]] = [
    (HibariTTS, 24000, "local-tts", "hibari"),
    (EspeakTTS, 22050, "free-tts", "espeak-ng"),
]


@pytest.mark.parametrize(("tts_cls", "rate", "label", "provider"), TTS_CLASSES)
async def test_tts_describes_itself_honestly(
    tts_cls: type[EngineTTS], rate: int, label: str, provider: str
) -> None:
    voice = tts_cls()
    assert voice.label == label
    assert voice.provider == provider
    assert voice.model not in ("", "unknown")
    assert voice.sample_rate == rate
    assert voice.num_channels == 1
    assert voice.capabilities.streaming is True


@pytest.mark.parametrize(("tts_cls", "rate", "label", "provider"), TTS_CLASSES)
async def test_synthesize_yields_frames_at_the_voice_rate(
    tts_cls: type[EngineTTS], rate: int, label: str, provider: str
) -> None:
    voice = tts_cls()
    events = await collect_audio(voice.synthesize("Thanks for calling. How can I help you today?"))
    assert events and all(isinstance(ev, tts.SynthesizedAudio) for ev in events)
    assert {ev.frame.sample_rate for ev in events} == {rate}
    assert {ev.frame.num_channels for ev in events} == {1}
    assert events[-1].is_final and not any(ev.is_final for ev in events[:-1])
    pcm = joined_pcm(events)
    assert 1.0 < pcm.size / rate < 6.0
    assert not is_silent(pcm)


async def test_hibari_stream_is_understood_by_sphinx(
    sphinx: SphinxEngine,
) -> None:
    voice = HibariTTS()
    stream = voice.stream()
    text = f"{SENTENCES[0].capitalize()}. {SENTENCES[2].capitalize()}."
    for token in re.findall(r"\S+\s*", text):  # token by token, as an LLM writes
        stream.push_text(token)
    stream.end_input()
    events = await collect_audio(stream)
    await stream.aclose()
    assert {ev.frame.sample_rate for ev in events} == {24000}
    hyp = sphinx.transcribe(joined_pcm(events), 24000)
    wer = corpus_wer([(f"{SENTENCES[0]} {SENTENCES[2]}", hyp)])
    assert wer <= HIBARI_MAX_WER, hyp


@pytest.mark.parametrize(("tts_cls", "rate", "label", "provider"), TTS_CLASSES)
async def test_stream_voices_the_first_sentence_before_the_rest_is_written(
    tts_cls: type[EngineTTS], rate: int, label: str, provider: str
) -> None:
    voice = tts_cls()
    stream = voice.stream()
    received: list[tts.SynthesizedAudio] = []
    first_audio = asyncio.Event()

    async def listen() -> None:
        async for ev in stream:
            received.append(ev)
            first_audio.set()

    listener = asyncio.create_task(listen())
    try:
        # the second sentence has begun, so the tokenizer knows the first one is complete
        stream.push_text("Hello, thanks for calling us today. We")
        await asyncio.wait_for(first_audio.wait(), EVENT_DEADLINE_S)
        frames_before_rest = len(received)
        audio_before_rest = sum(ev.frame.duration for ev in received)
        assert audio_before_rest > 0.0  # audio arrived while the text was still being written

        stream.push_text(" have great offers on every model this month. Goodbye for now!")
        stream.end_input()
        await asyncio.wait_for(listener, EVENT_DEADLINE_S)
    finally:
        listener.cancel()
        await stream.aclose()

    assert len(received) > frames_before_rest
    total = sum(ev.frame.duration for ev in received)
    assert total > audio_before_rest + 1.0  # the later sentences were voiced too
    assert {ev.frame.sample_rate for ev in received} == {rate}
    assert len({ev.segment_id for ev in received}) == 1
    assert received[-1].is_final


@pytest.mark.parametrize(("tts_cls", "rate", "label", "provider"), TTS_CLASSES)
async def test_whitespace_text_is_silence_not_an_error(
    tts_cls: type[EngineTTS], rate: int, label: str, provider: str
) -> None:
    voice = tts_cls()
    assert await collect_audio(voice.synthesize("   \n\t ")) == []
    stream = voice.stream()
    stream.push_text("   ")
    stream.end_input()
    assert await collect_audio(stream) == []
    await stream.aclose()


async def test_unspeakable_text_becomes_a_short_pause_not_a_failure() -> None:
    """An emoji-only reply must not take the floor voice offline ("no audio frames" error)."""
    voice = HibariTTS()
    events = await collect_audio(voice.synthesize("\U0001f44d"))
    assert events
    assert 0.05 <= sum(ev.frame.duration for ev in events) <= 1.0


async def test_tts_rejects_bad_input_clearly() -> None:
    with pytest.raises(ValueError, match="speed must be between"):
        HibariTTS(speed=3.0)
    with pytest.raises(ValueError, match="no voice 'xx-nonexistent'"):
        EspeakTTS(voice="xx-nonexistent")
    with pytest.raises(ValueError, match="words per minute"):
        EspeakTTS(rate_wpm=10)
    voice = HibariTTS()
    with pytest.raises(TypeError, match="must be a str"):
        voice.synthesize(42)  # type: ignore[arg-type]
    stream = voice.stream()
    with pytest.raises(TypeError, match="must be a str"):
        stream.push_text(None)  # type: ignore[arg-type]
    await stream.aclose()


async def test_local_voices_chain_under_livekits_fallback_adapter() -> None:
    chain = tts.FallbackAdapter([HibariTTS(), EspeakTTS()])
    assert chain.sample_rate == 24000 and chain.capabilities.streaming
    events = await collect_audio(chain.synthesize("Let me check that for you."))
    assert {ev.frame.sample_rate for ev in events} == {24000}
    assert not is_silent(joined_pcm(events))
    await chain.aclose()


# --- LiveKit STT interface ----------------------------------------------------------------------


async def test_stt_describes_itself_honestly() -> None:
    ears = SphinxSTT()
    assert (ears.label, ears.provider) == ("free-stt", "pocketsphinx")
    assert ears.model not in ("", "unknown")
    caps = ears.capabilities
    assert caps.streaming and caps.interim_results and caps.offline_recognize
    # streaming for real, so LiveKit's fallback adapter accepts it without a VAD
    chain = stt.FallbackAdapter([ears])
    await chain.aclose()


async def test_recognize_transcribes_room_audio(hibari_pcm: dict[str, Int16Array]) -> None:
    sentence, pcm = next(iter(hibari_pcm.items()))
    room_audio = resample(pcm, 24000, 48000)  # what a LiveKit room track delivers
    event = await SphinxSTT().recognize(to_frames(room_audio, 48000))
    assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    assert event.alternatives[0].language == "en-US"
    assert corpus_wer([(sentence, event.alternatives[0].text)]) <= HIBARI_MAX_WER


async def test_recognize_stream_emits_speech_events_and_finals(
    hibari_pcm: dict[str, Int16Array],
) -> None:
    gap = np.zeros(24000, dtype=np.int16)  # one second between utterances
    sentences = list(hibari_pcm)
    audio = np.concatenate([gap, hibari_pcm[sentences[0]], gap, hibari_pcm[sentences[1]], gap])
    room_audio = resample(audio, 24000, 48000)

    stream = SphinxSTT().stream()
    for frame in to_frames(room_audio, 48000):
        stream.push_frame(frame)
    stream.end_input()

    async def drain() -> list[stt.SpeechEvent]:
        return [ev async for ev in stream]

    events = await asyncio.wait_for(drain(), EVENT_DEADLINE_S)
    await stream.aclose()
    kinds = [ev.type for ev in events if ev.type != stt.SpeechEventType.RECOGNITION_USAGE]
    starts = [i for i, k in enumerate(kinds) if k == stt.SpeechEventType.START_OF_SPEECH]
    ends = [i for i, k in enumerate(kinds) if k == stt.SpeechEventType.END_OF_SPEECH]
    finals = [ev for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert len(starts) == len(ends) >= 2, kinds
    assert stt.SpeechEventType.INTERIM_TRANSCRIPT in kinds
    for start, end in zip(starts, ends, strict=True):  # each utterance: start, ..., final, end
        assert start < end
        assert kinds[end - 1] == stt.SpeechEventType.FINAL_TRANSCRIPT
    heard = " ".join(ev.alternatives[0].text for ev in finals)
    wer = corpus_wer([(" ".join(sentences), heard)])
    assert wer <= HIBARI_STREAMED_MAX_WER, heard
    # transcript times are on the stream's clock: the first speech begins after the first gap
    assert 0.9 <= finals[0].alternatives[0].start_time < finals[0].alternatives[0].end_time
    usage = sum(
        ev.recognition_usage.audio_duration for ev in events if ev.recognition_usage is not None
    )
    assert usage == pytest.approx(audio.size / 24000, abs=0.1)


async def test_recognize_stream_finalizes_speech_cut_off_by_end_of_input(
    hibari_pcm: dict[str, Int16Array],
) -> None:
    sentence, pcm = next(iter(hibari_pcm.items()))
    speech_only = pcm[: pcm.size - 24000 // 4]  # the caller is still talking when input ends
    stream = SphinxSTT().stream()
    for frame in to_frames(resample(speech_only, 24000, 48000), 48000):
        stream.push_frame(frame)
    stream.end_input()

    async def drain() -> list[stt.SpeechEvent]:
        return [ev async for ev in stream]

    events = await asyncio.wait_for(drain(), EVENT_DEADLINE_S)
    await stream.aclose()
    kinds = [ev.type for ev in events]
    assert kinds[-3:] == [
        stt.SpeechEventType.FINAL_TRANSCRIPT,
        stt.SpeechEventType.END_OF_SPEECH,
        stt.SpeechEventType.RECOGNITION_USAGE,
    ], kinds
    heard = events[-3].alternatives[0].text
    # the last quarter second was cut, so allow a lost word on top of the usual bound
    assert corpus_wer([(sentence, heard)]) <= HIBARI_STREAMED_MAX_WER + 0.1, heard


async def test_recognize_stream_stays_quiet_on_silence() -> None:
    stream = SphinxSTT().stream()
    for frame in to_frames(np.zeros(48000 * 2, dtype=np.int16), 48000):
        stream.push_frame(frame)
    stream.end_input()

    async def drain() -> list[stt.SpeechEvent]:
        return [ev async for ev in stream]

    events = await asyncio.wait_for(drain(), EVENT_DEADLINE_S)
    await stream.aclose()
    assert [ev.type for ev in events] == [stt.SpeechEventType.RECOGNITION_USAGE]


async def test_stt_rejects_bad_input_clearly() -> None:
    with pytest.raises(ValueError, match="only has an English model"):
        SphinxSTT(language="fr")
    with pytest.raises(ValueError, match="vad_mode"):
        SphinxSTT(vad_mode=7)
    with pytest.raises(ValueError, match="several 30 ms frames"):
        SphinxSTT(vad_window_s=0.03)
    with pytest.raises(ValueError, match="only has an English model"):
        SphinxSTT().stream(language="de-DE")
    with pytest.raises(ValueError, match="only has an English model"):
        await SphinxSTT().recognize(to_frames(np.zeros(1600, np.int16), 16000), language="es")
    with pytest.raises(ValueError, match="no frames"):
        await SphinxSTT().recognize([])
