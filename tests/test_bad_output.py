"""Bad provider output is bounded: it fails over like any failure and costs the caller nothing.

Through the real LiveKit plugins against the simulators: Cartesia answering 200 with random
bytes, an HTML page, an error document or a fraction of the audio; a 10 MB error body; a
``Retry-After`` of ``inf`` or ``1e300``. Each time the caller is answered by the healthy cloud
provider next in the chain (ElevenLabs, OpenRouter), and never hears what was not speech.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from bench.midstream_support import two_voices, voice_specs
from plugins.chain import Chains, build_chains
from plugins.resilience.classify import MAX_EVIDENCE_CHARS
from plugins.resilience.deadlines import DeadlineSettings
from plugins.resilience.retry_after import MAX_RETRY_AFTER_S
from plugins.resilience.scrub import MAX_MESSAGE_CHARS
from plugins.resilience.speech_check import FIRST_WINDOW_S, WINDOW_S, SpeechCheck, implausible
from plugins.resilience.store import DocumentStore, open_store
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec
from tests.guard_fixtures import RecordingObserver, ask, synthesize

ROOT = Path(__file__).resolve().parent.parent
DEADLINES = {
    "tts": DeadlineSettings(floor_s=2.0, ceiling_s=5.0, stall_s=2.0),
    "llm": DeadlineSettings(floor_s=2.0, ceiling_s=5.0, stall_s=2.0),
}
TEXT = "Thanks for calling Sunny Solar today. We install panels and batteries for homes."
SAMPLE_RATE = 24000


@pytest.fixture(scope="module")
def warm_voice() -> None:
    from plugins.local.hibari_tts import HibariEngine

    HibariEngine.shared().synthesize("warm up")  # the TTS simulators speak with it


@pytest.fixture
async def voices(warm_voice: None) -> AsyncIterator[tuple[CartesiaSimulator, ElevenLabsSimulator]]:
    async with two_voices() as voices:
        yield voices


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[DocumentStore]:
    s = open_store(None, tmp_path)
    yield s
    await s.aclose()


def tts_chain(
    voices: tuple[CartesiaSimulator, ElevenLabsSimulator],
    store: DocumentStore,
    observer: RecordingObserver,
) -> Chains:
    specs = voice_specs(voices)
    return build_chains(specs, store, deadlines=DEADLINES, probes=False, observers=[observer])


def noise_windows(pcm: np.ndarray) -> list[str]:
    window = int(WINDOW_S * SAMPLE_RATE)
    found = (implausible(pcm[i : i + window]) for i in range(0, pcm.size, window))
    return [reason for reason in found if reason]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault(FaultType.GARBAGE), "in_band_error"),  # random bytes: full-scale noise
        (Fault(FaultType.HTML), "in_band_error"),  # a proxy's page as audio
        (Fault(FaultType.IN_BAND_ERROR), "truncated"),  # an error document in a 200
        (Fault(FaultType.SHORT), "truncated"),  # a clean end after a fifth of the audio
    ],
    ids=["garbage-200", "html-200", "error-in-200", "stops-early"],
)
async def test_implausible_tts_audio_fails_over_to_the_next_voice(
    voices: tuple[CartesiaSimulator, ElevenLabsSimulator],
    store: DocumentStore,
    fault: Fault,
    kind: str,
) -> None:
    cartesia, elevenlabs = voices
    cartesia.state.plan.always(fault)
    observer = RecordingObserver()
    chains = tts_chain(voices, store, observer)
    try:
        audio = await synthesize(chains.tts, TEXT)
    finally:
        await chains.aclose()
    assert kind in observer.kinds("tts:cartesia")  # a failure, not a success
    assert ("tts:cartesia", None) not in [(k, None) for k, _ in observer.successes]
    assert elevenlabs.state.log.count() >= 1  # the healthy cloud voice answered
    assert any(k == "tts:elevenlabs" for k, _ in observer.successes)
    pcm = np.frombuffer(audio, dtype=np.int16)
    assert pcm.size / SAMPLE_RATE > 2.0  # the whole text was spoken
    assert noise_windows(pcm) == []  # the caller heard no noise, not even one window


@pytest.mark.parametrize("window_s", [FIRST_WINDOW_S, WINDOW_S], ids=["first", "later"])
def test_real_voices_never_look_implausible_in_any_window(
    warm_voice: None, window_s: float
) -> None:
    """The short first window is judged on a voice's opening 40 ms: every 40 ms (and 100 ms)
    of every local voice, at every speed, loud or soft, must pass as speech."""
    from plugins.local.espeak_tts import EspeakEngine
    from plugins.local.hibari_tts import HibariEngine

    hibari, espeak = HibariEngine.shared(), EspeakEngine.shared()
    renders = [(hibari.synthesize(TEXT, speed=v), hibari.sample_rate) for v in (0.85, 1.0, 1.2)]
    renders += [(espeak.synthesize(TEXT, voice=v), espeak.sample_rate) for v in ("en-us", "en")]
    for pcm, rate in renders:
        loud = (pcm.astype(np.int32) * 32000 // max(1, int(np.abs(pcm).max()))).astype(np.int16)
        for audio in (pcm, loud):  # as rendered, and normalised to just below full scale
            window = int(window_s * rate)
            starts = range(0, audio.size - window + 1, window // 2)  # overlapping: any window
            reasons = {implausible(audio[i : i + window]) for i in starts} - {None}
            assert reasons == set(), (rate, reasons)


def test_the_first_window_is_judged_after_two_frames_then_every_tenth_of_a_second() -> None:
    frame = (np.sin(np.arange(480) / 3.0) * 3000).astype(np.int16)  # 20 ms at 24 kHz
    check = SpeechCheck()
    judged_after = []
    for n in range(1, 13):
        before = check.windows_judged
        assert check.feed(frame, 24000, 1) is None
        if check.windows_judged > before:
            judged_after.append(n)
    assert judged_after == [2, 7, 12]  # 40 ms held back; then 100 ms windows
    noise = np.random.default_rng(7).integers(-32768, 32767, 480 * 2, dtype=np.int16)
    first = SpeechCheck()
    assert first.feed(noise[:480], 24000, 1) is None  # one frame: not judged yet
    assert "noise" in (first.feed(noise[480:], 24000, 1) or "")  # caught before it is heard


async def test_plausible_speech_is_a_success(
    voices: tuple[CartesiaSimulator, ElevenLabsSimulator], store: DocumentStore
) -> None:
    observer = RecordingObserver()
    chains = tts_chain(voices, store, observer)
    try:
        assert len(await synthesize(chains.tts, TEXT)) > 0
        assert len(await synthesize(chains.tts, "OK.")) > 0  # too short to judge for length
    finally:
        await chains.aclose()
    assert observer.failures == []
    assert voices[1].state.log.count() == 0


async def test_a_huge_error_body_is_read_and_classified_bounded(
    voices: tuple[CartesiaSimulator, ElevenLabsSimulator], store: DocumentStore
) -> None:
    cartesia, elevenlabs = voices
    cartesia.state.plan.always(Fault(FaultType.HUGE_ERROR, status=503))
    observer = RecordingObserver()
    chains = tts_chain(voices, store, observer)
    try:
        assert len(await synthesize(chains.tts, TEXT)) > 0
    finally:
        await chains.aclose()
    failures = [f for key, f, _ in observer.failures if key == "tts:cartesia"]
    assert len(failures) == 2  # a fast 503: one immediate retry, then the next voice
    for failure in failures:
        assert failure.kind.value == "server_error" and failure.status == 503
        assert len(failure.message) <= MAX_MESSAGE_CHARS
    assert elevenlabs.state.log.count() >= 1
    assert len((await store.health("tts:cartesia")).last_error) <= MAX_MESSAGE_CHARS


@pytest.fixture
async def llms(warm_voice: None) -> AsyncIterator[tuple[OpenAISimulator, OpenAISimulator]]:
    async with OpenAISimulator() as a, OpenAISimulator(flavor="openrouter") as b:
        yield a, b


def llm_chain(
    llms: tuple[OpenAISimulator, OpenAISimulator], store: DocumentStore, observer: RecordingObserver
) -> Chains:
    a, b = llms
    specs = [
        ProviderSpec("llm", "openai", base_url=a.base_url, api_key="sim-key"),
        ProviderSpec("llm", "openrouter", base_url=b.base_url, api_key="sim-key"),
    ]
    return build_chains(specs, store, deadlines=DEADLINES, probes=False, observers=[observer])


async def test_a_huge_llm_error_body_costs_the_caller_nothing_more(
    llms: tuple[OpenAISimulator, OpenAISimulator], store: DocumentStore
) -> None:
    """The OpenAI SDK reads and parses the 10 MB body; the classifier reads 4 KB of it."""
    openai, openrouter = llms
    openai.state.plan.always(Fault(FaultType.HUGE_ERROR, status=500))
    observer = RecordingObserver()
    chains = llm_chain(llms, store, observer)
    try:
        assert await ask(chains.llm, "How much does it cost?")
    finally:
        await chains.aclose()
    ((_, failure, _),) = [f for f in observer.failures if f[0] == "llm:openai"]
    assert failure.kind.value == "server_error" and len(failure.message) <= MAX_MESSAGE_CHARS
    assert openrouter.state.log.count() >= 1
    assert MAX_EVIDENCE_CHARS < 10 * 1024 * 1024


@pytest.mark.parametrize("retry_after", [math.inf, 1e300, 999999999.0])
async def test_an_absurd_retry_after_is_clamped_and_status_survives(
    llms: tuple[OpenAISimulator, OpenAISimulator], tmp_path: Path, retry_after: float
) -> None:
    openai, openrouter = llms
    openai.state.plan.always(Fault(FaultType.STATUS, status=429, retry_after_s=retry_after))
    store = open_store(None, tmp_path)
    observer = RecordingObserver()
    chains = llm_chain(llms, store, observer)
    try:
        assert await ask(chains.llm, "How much does it cost?")
    finally:
        await chains.aclose()
    ((_, failure, _),) = [f for f in observer.failures if f[0] == "llm:openai"]
    assert failure.kind.value == "rate_limited"
    assert failure.retry_after_s is None or failure.retry_after_s <= MAX_RETRY_AFTER_S
    health = await store.health("llm:openai")
    await store.aclose()
    assert health.open_until is not None
    assert health.open_until <= time.time() + MAX_RETRY_AFTER_S + 5  # not 31 years, not forever
    assert openrouter.state.log.count() >= 1
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (item,) = [i for i in json.loads(proc.stdout) if i["key"] == "llm:openai"]
    # inf is no number of seconds: an ordinary short trip, which may be over by now
    assert item["label"].startswith(("rate-limited", "probing")), item["label"]
