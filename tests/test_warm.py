"""Warm connections (issue 15, part 4): the real Cartesia and ElevenLabs plugins, their simulators.

The serving member is connected when the call starts (the adapter's ``prewarm()``, which
LiveKit's session calls), the next member when its predecessor starts failing, and a member's
connection lost to a failed attempt is re-established before its next request needs it. Each
simulated handshake costs 0.3 s, as a real one to a provider's region does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.midstream_support import speak, two_voices, voice_specs
from plugins.chain import Chains, build_chains
from plugins.resilience.store import DocumentStore
from plugins.resilience.types import BreakerState
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.sim.faults import Fault, FaultType
from tests.guard_fixtures import FakeClock, clock, make_store

__all__ = ["clock"]

HANDSHAKE_S = 0.3


@pytest.fixture
async def sims() -> AsyncIterator[tuple[CartesiaSimulator, ElevenLabsSimulator]]:
    from plugins.local.hibari_tts import HibariEngine

    HibariEngine.shared().synthesize("warm up")
    async with two_voices(connect_delay_s=HANDSHAKE_S) as voices:
        yield voices


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[DocumentStore]:
    s = make_store(tmp_path, clock, trip_after=3)  # one failure leaves the breaker closed
    yield s
    await s.aclose()


def _chains(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator], store: DocumentStore, clock: FakeClock
) -> Chains:
    specs = voice_specs(sims)
    return build_chains(specs, store, clock=clock, probes=False)


def _elevenlabs_sockets(sim: ElevenLabsSimulator) -> int:
    return sum(1 for a in sim.state.log.items() if "stream-input" in a.route)


async def test_call_start_connects_the_serving_member_before_the_first_sentence(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator], store: DocumentStore, clock: FakeClock
) -> None:
    cartesia, _ = sims
    chains = _chains(sims, store, clock)
    try:
        chains.tts.prewarm()  # what LiveKit's AgentSession does when the call starts
        assert await cartesia.wait_handshakes(1, timeout=5.0)
        started = time.perf_counter()
        spoken = await speak(chains.tts, "Hello there.", time.perf_counter)
        assert spoken.error is None
        assert cartesia.handshakes == 1  # the first sentence used the warm socket
        assert spoken.audible_times[0] - started < HANDSHAKE_S + 0.5
    finally:
        await chains.aclose()


async def test_call_start_warms_the_member_that_will_serve_not_a_known_dead_primary(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator], store: DocumentStore, clock: FakeClock
) -> None:
    cartesia, elevenlabs = sims
    await store.set_override("tts:cartesia", BreakerState.FORCED_OPEN)  # another call learned it
    chains = _chains(sims, store, clock)
    try:
        chains.tts.prewarm()
        task = chains.tts.warmer._task
        assert task is not None
        await task
        assert chains.tts.warmer.warmed == [1]  # ElevenLabs, the member that will serve
        assert cartesia.handshakes == 0
        before = time.perf_counter()
        while _elevenlabs_sockets(elevenlabs) == 0 and time.perf_counter() - before < 5.0:
            assert await cartesia.wait_handshakes(1, timeout=0.05) is False
        assert _elevenlabs_sockets(elevenlabs) == 1
    finally:
        await chains.aclose()


async def test_the_next_member_is_warmed_when_its_predecessor_fails(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator], store: DocumentStore, clock: FakeClock
) -> None:
    cartesia, _ = sims
    cartesia.state.plan.once(Fault(FaultType.STATUS, status=500))
    chains = _chains(sims, store, clock)
    try:
        spoken = await speak(chains.tts, "Hello there.", time.perf_counter)
        assert spoken.error is None
        assert 1 in chains.tts.warmer.warmed  # warmed at Cartesia's first failure
    finally:
        await chains.aclose()


async def test_a_connection_lost_mid_answer_is_reestablished_before_the_next_request(
    sims: tuple[CartesiaSimulator, ElevenLabsSimulator], store: DocumentStore, clock: FakeClock
) -> None:
    cartesia, _ = sims
    chains = _chains(sims, store, clock)
    try:
        assert (await speak(chains.tts, "Hello there.", time.perf_counter)).error is None
        assert cartesia.handshakes == 1
        cartesia.state.plan.once(Fault(FaultType.CUT, after_chunks=5))  # the socket dies
        spoken = await speak(chains.tts, "We install panels for homes.", time.perf_counter)
        assert spoken.error is None  # ElevenLabs finished the sentence
        # reconnected in the background, before anything asks Cartesia for audio again
        assert await cartesia.wait_handshakes(2, timeout=5.0)
        started = time.perf_counter()
        spoken = await speak(chains.tts, "Would you like a visit?", time.perf_counter)
        assert spoken.error is None
        assert cartesia.handshakes == 2  # the request met the fresh socket: no handshake
        assert spoken.audible_times[0] - started < HANDSHAKE_S + 0.5
    finally:
        await chains.aclose()
