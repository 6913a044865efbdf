"""A recogniser failing during the caller's speech: the utterance is replayed to the next one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from livekit import rtc
from livekit.agents import utils

from bench.midstream_support import recognize, speech_frames, with_stock_adapters, words
from plugins.chain import Chains, build_chains
from plugins.fallback import STTFallbackAdapter
from plugins.resilience.deadlines import DeadlineSettings
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
    assert len(adapter.switches) == 1 and adapter.switches[0].replayed_s > 0.5
    assert adapter.switches[0].recovered_s is not None


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
