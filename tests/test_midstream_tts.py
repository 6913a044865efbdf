"""A voice failing mid-utterance resumes on the next voice: real plugins, real simulators."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from livekit.agents import tokenize

from bench.midstream_support import (
    speak,
    transcribe,
    two_voices,
    voice_specs,
    with_stock_adapters,
    words,
)
from plugins.chain import Chains, build_chains
from plugins.fallback import TTSFallbackAdapter
from plugins.resilience.deadlines import DeadlineSettings
from plugins.resilience.store import DocumentStore
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.sim.tts_audio import speak as speak_pcm
from tests.guard_fixtures import FakeClock, RecordingObserver, clock, store

__all__ = ["clock", "store"]

FAST = {"tts": DeadlineSettings(floor_s=0.3, ceiling_s=0.8, stall_s=0.5)}
TEXT = (
    "Thanks for calling Sunny Solar today. "
    "We install panels and batteries for homes. "
    "Would you like to book a free visit?"
)


@pytest.fixture(scope="module")
def warm() -> None:
    from plugins.local.hibari_tts import HibariEngine
    from plugins.local.sphinx_stt import SphinxEngine

    HibariEngine.shared().synthesize("warm up")
    SphinxEngine.shared()


@pytest.fixture
async def sims(warm: None) -> AsyncIterator[tuple[CartesiaSimulator, ElevenLabsSimulator]]:
    async with two_voices() as voices:
        yield voices


def _chains(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator],
    store: DocumentStore,
    clock: FakeClock,
    observer: RecordingObserver,
    *,
    midstream: bool = True,
) -> Chains:
    specs = voice_specs(sims)
    chains = build_chains(
        specs,
        store,
        deadlines=FAST,
        clock=clock,
        probes=False,
        observers=[observer],
    )
    return chains if midstream else with_stock_adapters(chains)


SENTENCES = tokenize.basic.SentenceTokenizer().tokenize(TEXT)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        # one WebSocket context for the utterance; closed mid-context after 1 s of audio
        (Fault(FaultType.CUT, after_chunks=25), "connection_error"),
        (Fault(FaultType.STALL, after_chunks=25), "stall"),  # 1 s heard
        (Fault(FaultType.SILENT), "empty_result"),
        (Fault(FaultType.EMPTY), "empty_result"),
    ],
    ids=["cut", "stall", "silent", "empty"],
)
async def test_failed_voice_resumes_at_the_first_unspoken_sentence(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator],
    store: DocumentStore,
    clock: FakeClock,
    fault: Fault,
    kind: str,
) -> None:
    observer = RecordingObserver()
    chains = _chains(sims, store, clock, observer)
    chains_tts = chains.tts
    assert isinstance(chains_tts, TTSFallbackAdapter)
    sims[0].state.plan.once(fault)
    try:
        spoken = await speak(chains_tts, TEXT, time.perf_counter)
    finally:
        await chains.aclose()
    assert spoken.error is None
    # every sentence delivered whole exactly once, in order
    assert [s for _, s in chains_tts.delivered] == SENTENCES
    assert all("elevenlabs" in voice for voice, _ in chains_tts.delivered)
    failures = observer.kinds("tts:cartesia")
    assert failures == [kind]
    heard = words(transcribe(spoken.pcm, spoken.sample_rate))
    # the recogniser is imperfect; the last sentence's words must be there all the same
    assert {"book", "visit"} & set(heard) or {"free", "would"} & set(heard), heard


def _cut_in_sentence_two(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator],
    store: DocumentStore,
    clock: FakeClock,
    observer: RecordingObserver,
) -> tuple[Chains, TTSFallbackAdapter]:
    """Chains whose Cartesia context (one carries the utterance) is cut a few chunks into
    sentence 2."""
    chains = _chains(sims, store, clock, observer)
    adapter = chains.tts
    assert isinstance(adapter, TTSFallbackAdapter)
    first_chunks = math.ceil(speak_pcm(SENTENCES[0], 24_000).size / (24_000 * 40 // 1000))
    sims[0].state.plan.once(Fault(FaultType.CUT, after_chunks=first_chunks + 4))
    return chains, adapter


async def test_voice_change_mid_utterance_is_logged_with_the_sentence(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator], store: DocumentStore, clock: FakeClock
) -> None:
    observer = RecordingObserver()
    chains, adapter = _cut_in_sentence_two(sims, store, clock, observer)
    try:
        spoken = await speak(adapter, TEXT, time.perf_counter)
    finally:
        await chains.aclose()
    assert spoken.error is None
    assert [s for _, s in adapter.delivered] == SENTENCES
    voices = [v for v, _ in adapter.delivered]
    assert "cartesia" in voices[0] and all("elevenlabs" in v for v in voices[1:])
    assert len(adapter.switches) == 1
    assert observer.kinds("tts:cartesia") == ["connection_error"]  # the socket closed (1006)
    switch = adapter.switches[0]
    assert switch.sentence == 1 and "cartesia" in switch.source and "elevenlabs" in switch.target


@pytest.mark.parametrize(
    "midstream",
    [
        pytest.param(True, id="ours"),
        pytest.param(False, id="stock"),
    ],
)
async def test_the_first_sentence_is_voiced_while_the_second_is_still_being_written(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator],
    store: DocumentStore,
    clock: FakeClock,
    midstream: bool,
) -> None:
    """An LLM has written one sentence and the first word of the next: the caller hears the
    first now, not a whole sentence later. Cartesia's plugin segments the text itself and holds a
    sentence until the next one begins, so an adapter that handed it whole sentences would hold
    each one a sentence longer: ours hands it the text as written, as stock does."""
    chains = _chains(sims, store, clock, RecordingObserver(), midstream=midstream)
    stream = chains.tts.stream()
    try:
        stream.push_text("Thanks for calling Sunny Solar today, how are you doing? We")
        first = await asyncio.wait_for(_first_audible(stream), timeout=5.0)
        assert first > 0
        stream.push_text(" install panels.")
        stream.end_input()
        async for _ in stream:  # the rest of the utterance
            pass
    finally:
        await stream.aclose()
        await chains.aclose()


async def _first_audible(stream: Any) -> int:
    async for audio in stream:
        pcm = np.frombuffer(audio.frame.data, dtype=np.int16)
        if pcm.size and int(np.abs(pcm).max()) > 500:
            return int(pcm.size)
    return 0


async def test_a_voice_taking_over_mid_answer_gets_the_text_written_after_the_switch(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator], store: DocumentStore, clock: FakeClock
) -> None:
    """Cartesia is cut in sentence 2 while the LLM is still writing sentence 3: ElevenLabs
    takes over at sentence 2 and is handed the rest as it is written, once, in order: sentence
    2 whole, then the part of sentence 3 written before the switch and the part written after."""
    observer = RecordingObserver()
    chains, adapter = _cut_in_sentence_two(sims, store, clock, observer)
    head, tail = TEXT.split(" a free visit?")
    pcm: list[np.ndarray] = []
    try:
        async with adapter.stream() as stream:
            for i in range(0, len(head), 12):
                stream.push_text(head[i : i + 12])

            async def listen() -> None:
                async for audio in stream:
                    pcm.append(np.frombuffer(audio.frame.data, dtype=np.int16).copy())

            listener = asyncio.create_task(listen())
            deadline = time.monotonic() + 10.0
            while not adapter.switches and not listener.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert adapter.switches, "Cartesia was never cut"
            stream.push_text(" a free visit?" + tail)
            stream.end_input()
            await asyncio.wait_for(listener, timeout=20.0)
    finally:
        await chains.aclose()
    assert [s for _, s in adapter.delivered] == SENTENCES
    assert [v for v, _ in adapter.delivered][1:] == ["guarded[tts:elevenlabs]"] * 2
    # ElevenLabs was billed for sentences 2 and 3 only (its plugin ends each push with a space)
    rest = len(" ".join(SENTENCES[1:]))
    assert rest <= sims[1].characters_used <= rest + 4
    heard = words(transcribe(np.concatenate(pcm), adapter.sample_rate))
    assert {"book", "visit", "free"} & set(heard), heard


@pytest.mark.parametrize(
    "text",
    [
        TEXT,
        "Dr. Smith said it costs $3.50 a month...   Really?\nYes!  It does, at acme.com today.",
        "  Hello there, friend.   Short.  A longer sentence follows the short one here.",
    ],
)
async def test_each_sentence_is_found_where_it_was_written(text: str) -> None:
    """The resume hands the next voice the text from the first unheard sentence on: each
    sentence LiveKit's tokenizer cut must be found exactly where it stands in the written text,
    however the tokenizer changed the spaces around it."""
    from plugins.fallback.tts_adapter import _Script

    script = _Script()
    words_stream = tokenize.basic.SentenceTokenizer().stream()
    for i in range(0, len(text), 5):  # as an LLM writes it
        script.write(text[i : i + 5])
        words_stream.push_text(text[i : i + 5])
    words_stream.end_input()
    async for token in words_stream:
        script.add(token.token)
    script.end()
    assert len(script.sentences) >= 2
    for i, sentence in enumerate(script.sentences):
        assert text[script.start_of(i) : script.ends[i]].split() == sentence.split()
    assert not text[script.ends[-1] :].strip()
    assert script.whole_before(script.ends[0]) == 1
    assert script.whole_before(script.ends[0] - 1) == 0
    assert await script.text_after(script.start_of(1)) == text[script.ends[0] :]
    assert await script.text_after(len(text)) is None
