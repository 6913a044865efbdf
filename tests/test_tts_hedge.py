"""TTS first-audio hedging (issue 15, part 5): a late voice is raced by the next one.

The real Cartesia and ElevenLabs plugins against their simulators. Once Cartesia's first-audio
p95 is known, an utterance it is slow to start (1.5 s) is started on ElevenLabs in parallel
after that p95 (not after Cartesia's deadline); the caller hears whichever voice is audible
first, only that one, and the other is closed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from bench.midstream_support import speak, transcribe, two_voices, voice_specs, words
from plugins.chain import Chains, build_chains
from plugins.resilience.store import DocumentStore
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.sim.faults import Fault, FaultType
from tests.guard_fixtures import FakeClock, RecordingObserver, clock, store

__all__ = ["clock", "store"]

TEXT = "Thanks for calling Sunny Solar today."


@pytest.fixture
async def sims() -> AsyncIterator[tuple[CartesiaSimulator, ElevenLabsSimulator]]:
    from plugins.local.hibari_tts import HibariEngine
    from plugins.local.sphinx_stt import SphinxEngine

    HibariEngine.shared().synthesize("warm up")
    SphinxEngine.shared()
    async with two_voices() as voices:
        yield voices


def _chains(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator],
    store: DocumentStore,
    clock: FakeClock,
    observer: RecordingObserver,
    *,
    hedge: bool,
) -> Chains:
    specs = voice_specs(sims)
    return build_chains(
        specs, store, clock=clock, probes=False, observers=[observer], hedge_requests=hedge
    )


@pytest.mark.parametrize("hedge", [True, False], ids=["hedged", "not-hedged"])
async def test_a_late_voice_is_raced_by_the_next_one(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator],
    store: DocumentStore,
    clock: FakeClock,
    hedge: bool,
) -> None:
    cartesia, elevenlabs = sims
    observer = RecordingObserver()
    chains = _chains(sims, store, clock, observer, hedge=hedge)
    try:
        for _ in range(5):  # learn Cartesia's first-audio p95
            assert (await speak(chains.tts, "Hello there.", time.perf_counter)).error is None
        deadline = chains.guards["tts:cartesia"].guard.deadline
        assert deadline.p95 is not None and deadline.p95 < 0.5
        first_s = deadline.first_s  # Cartesia's learned first-audio deadline
        before = elevenlabs.state.log.count()
        cartesia.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=1.5))
        started, wall_started = time.perf_counter(), time.time()
        spoken = await speak(chains.tts, TEXT, time.perf_counter)
        first_audio = spoken.audible_times[0] - started
        assert spoken.error is None
        assert elevenlabs.state.log.count() > before  # ElevenLabs spoke, one way or the other
        heard = words(transcribe(spoken.pcm, spoken.sample_rate))
        assert len(heard) <= len(words(TEXT)) + 2, heard  # one voice, said once
        started_b = [a.at for a in elevenlabs.state.log.items()[before:]]
        if hedge:
            # ElevenLabs was started at Cartesia's p95, before Cartesia's own deadline ran out
            # (how much sooner the caller hears it is bench.midstream's to measure)
            assert started_b[0] - wall_started < first_s, (started_b, first_s)
            assert first_audio < 1.5  # never waited for the slow voice
        else:
            assert first_audio >= first_s, (first_audio, first_s)
            assert observer.kinds("tts:cartesia") == ["timeout"]
            assert started_b[0] - wall_started >= first_s  # only after Cartesia failed
    finally:
        await chains.aclose()
