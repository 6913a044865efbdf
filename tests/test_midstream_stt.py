"""A recogniser failing during the caller's speech: the utterance is replayed to the next one."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from livekit import rtc
from livekit.agents import utils

from bench.midstream_support import (
    recognize,
    recognize_timed,
    speech_frames,
    with_stock_adapters,
    words,
)
from plugins.chain import Chains, build_chains
from plugins.fallback import STTFallbackAdapter
from plugins.resilience.deadlines import DEFAULT_DEADLINES, DeadlineSettings
from plugins.resilience.store import DocumentStore
from plugins.sim.deepgram_sim import DeepgramSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.spec import ProviderSpec
from tests.guard_fixtures import FakeClock, RecordingObserver, clock, store

__all__ = ["clock", "store"]

FAST = {"stt": DeadlineSettings(floor_s=1.0, ceiling_s=2.0, stall_s=1.0)}
SENTENCE = "I would like to book an appointment for next week please"


@pytest.fixture(scope="module")
def speech() -> list[rtc.AudioFrame]:
    from plugins.local.sphinx_stt import SphinxEngine

    SphinxEngine.shared()
    return speech_frames(SENTENCE)


@pytest.fixture
async def sim() -> AsyncIterator[DeepgramSimulator]:
    async with utils.http_context.open(), DeepgramSimulator() as s:
        yield s


def _chains(
    sim: DeepgramSimulator,
    store: DocumentStore,
    clock: FakeClock,
    observer: RecordingObserver,
    *,
    midstream: bool = True,
) -> Chains:
    spec = ProviderSpec("stt", "deepgram", base_url=sim.base_url, api_key="sim-key")
    chains = build_chains(
        [spec],
        store,
        deadlines=FAST,
        clock=clock,
        probes=False,
        observers=[observer],
    )
    return chains if midstream else with_stock_adapters(chains)


async def _floor_alone(speech: list[rtc.AudioFrame]) -> str:
    from plugins.local.sphinx_stt import SphinxSTT

    floor = SphinxSTT()
    text, error = await recognize(floor, speech, pace=0.0)
    await floor.aclose()
    assert error is None and text
    return text


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault(FaultType.STALL, after_chunks=0), "stall"),
        (Fault(FaultType.CUT, after_chunks=1), None),
    ],
    ids=["stall-during-speech", "cut-during-speech"],
)
async def test_failed_stream_replays_the_utterance_to_the_next_recogniser(
    sim: DeepgramSimulator,
    store: DocumentStore,
    clock: FakeClock,
    speech: list[rtc.AudioFrame],
    fault: Fault,
    kind: str | None,
) -> None:
    expected = await _floor_alone(speech)
    sim.state.plan.always(fault)
    observer = RecordingObserver()
    chains = _chains(sim, store, clock, observer)
    adapter = chains.stt
    assert isinstance(adapter, STTFallbackAdapter)
    try:
        text, error = await recognize(adapter, speech, pace=0.5)
    finally:
        await chains.aclose()
    assert error is None
    assert words(text) == words(expected)  # the whole utterance, not just its tail
    failures = observer.kinds("stt:deepgram")
    assert failures and (kind is None or failures[0] == kind)
    assert len(adapter.switches) == 1
    # a cut is replayed to the next recogniser; a silent primary has usually been hedged onto
    # it before the stall verdict, and the running hedge takes over with nothing left to
    # replay (the words are whole either way, checked above)
    hedged = kind == "stall" and bool(adapter.hedges) and adapter.hedges[0].replayed_s > 0.5
    assert adapter.switches[0].replayed_s > 0.5 or hedged
    assert adapter.switches[0].recovered_s is not None or hedged


async def test_stock_adapter_loses_the_words_spoken_before_the_stall(
    sim: DeepgramSimulator, store: DocumentStore, clock: FakeClock, speech: list[rtc.AudioFrame]
) -> None:
    """The baseline: LiveKit's adapter moves on but the audio sent to the dead stream is gone."""
    expected = await _floor_alone(speech)
    sim.state.plan.always(Fault(FaultType.STALL, after_chunks=0))
    chains = _chains(sim, store, clock, RecordingObserver(), midstream=False)
    try:
        text, _ = await recognize(chains.stt, speech, pace=0.5)
    finally:
        await chains.aclose()
    assert len(words(text)) < len(words(expected))


# -- hedging a late recogniser onto the local floor ------------------------------------------
#: Stall windows far longer than a hedge's: whatever reaches the caller before them came from
#: the hedge, not from a failover.
PATIENT = {
    "stt": dataclasses.replace(
        DEFAULT_DEADLINES["stt"], ceiling_s=3.0, endpoint_s=3.0, stall_window=200
    )
}


def _silence(seconds: float, rate: int = 16000) -> list[rtc.AudioFrame]:
    step = rate // 50
    return [rtc.AudioFrame(b"\0\0" * step, rate, 1, step) for _ in range(round(seconds * 50))]


def _patient_chains(
    sim: DeepgramSimulator, store: DocumentStore, clock: FakeClock, observer: RecordingObserver
) -> Chains:
    spec = ProviderSpec("stt", "deepgram", base_url=sim.base_url, api_key="sim-key")
    return build_chains(
        [spec], store, deadlines=PATIENT, clock=clock, probes=False, observers=[observer]
    )


async def test_a_recogniser_that_never_answers_is_hedged_before_its_stall_verdict(
    sim: DeepgramSimulator, store: DocumentStore, clock: FakeClock, speech: list[rtc.AudioFrame]
) -> None:
    """The caller has paused and Deepgram sent nothing for the whole utterance: the floor
    starts on the buffered utterance half a second into the pause and the caller gets the
    words from it, long before the stall verdict (3 s here) moves the chain on."""
    expected = await _floor_alone(speech)
    sim.state.plan.always(Fault(FaultType.STALL, after_chunks=0))
    observer = RecordingObserver()
    chains = _patient_chains(sim, store, clock, observer)
    adapter = chains.stt
    try:
        heard = await recognize_timed(adapter, speech + _silence(3.5), pace=1.0)
    finally:
        await chains.aclose()
    assert heard.error is None
    assert words(heard.text) == words(expected)  # the whole utterance, once
    assert [h.winner for h in adapter.hedges] == ["free-stt"]
    assert adapter.hedges[0].replayed_s > 2.0  # it was given the utterance, not its tail
    assert heard.final_at is not None
    # the words reached the caller before the stall verdict (if it came at all by the end)
    assert all(heard.final_at < s.failed_at for s in adapter.switches)
    assert observer.kinds("stt:deepgram") in ([], ["stall"])


async def test_the_late_recognisers_own_final_is_not_delivered_twice(
    store: DocumentStore, clock: FakeClock, speech: list[rtc.AudioFrame]
) -> None:
    """A recogniser with no interims and a 2 s endpointer is hedged (its rhythm unknown yet);
    the floor's final wins, and Deepgram's final of the same words, which does come, is
    dropped: the caller gets the utterance once, and Deepgram is not failed for being late."""
    expected = await _floor_alone(speech)
    observer = RecordingObserver()
    async with (
        utils.http_context.open(),
        DeepgramSimulator(min_endpoint_s=2.0, interim_every_s=1000.0) as slow,
    ):
        chains = _patient_chains(slow, store, clock, observer)
        adapter = chains.stt
        try:
            heard = await recognize_timed(adapter, speech + _silence(2.5), pace=1.0)
        finally:
            await chains.aclose()
    assert heard.error is None
    assert words(heard.text) == words(expected)  # once: Deepgram's copy was dropped
    assert [h.winner for h in adapter.hedges] == ["free-stt"]
    assert [k for k, _ in observer.successes].count("stt:deepgram") == 1  # its final came
    assert observer.kinds("stt:deepgram") == [] and adapter.switches == []


async def test_a_healthy_recogniser_slow_in_its_usual_way_is_not_hedged_out(
    store: DocumentStore, clock: FakeClock
) -> None:
    """Deepgram keeps up with interims and endpoints 1.2 s after each pause, every time. Cold,
    it is alive (interims), so no hedge; once its endpoint rhythm is learned, a hedge waits
    for its own usual time. Every utterance is Deepgram's, and it is never failed over."""
    one = speech_frames("please book a visit for me") + _silence(1.0)
    observer = RecordingObserver()
    async with (
        utils.http_context.open(),
        DeepgramSimulator(min_endpoint_s=1.2, interim_every_s=0.5) as slow,
    ):
        spec = ProviderSpec("stt", "deepgram", base_url=slow.base_url, api_key="sim-key")
        chains = build_chains([spec], store, clock=clock, probes=False, observers=[observer])
        adapter = chains.stt
        try:
            heard = await recognize_timed(adapter, one * 4, pace=1.0)
        finally:
            await chains.aclose()
    assert heard.error is None
    assert [h.winner for h in adapter.hedges if h.winner == h.target] == []
    assert observer.kinds("stt:deepgram") == [] and adapter.switches == []
    assert [k for k, _ in observer.successes].count("stt:deepgram") == 4
    assert chains.guards["stt:deepgram"].guard.deadline.endpoints.samples >= 3
    assert len(words(heard.text)) >= 4 * 4
