"""What our fallback adapters add to LiveKit's contract: real streaming over a member's
WebSocket, guarded members that come back through their probe, typed switch events with the
member's key, legitimate silence, and a pluggable order inside a tier."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from livekit.agents import llm, utils

from bench.midstream_support import speak
from plugins.chain import build_chains
from plugins.fallback import (
    ChainObserver,
    ChainServed,
    ChainSwitch,
    LLMFallbackAdapter,
    TTSFallbackAdapter,
)
from plugins.observability.switches import SwitchEvent, SwitchTracker
from plugins.resilience.deadlines import DeadlineSettings
from plugins.resilience.store import DocumentStore
from plugins.sim.cartesia_sim import WS_ROUTE, CartesiaSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec
from tests.fallback_fakes import FakeLLM, FakeTTS
from tests.guard_fixtures import FakeClock, ask, clock, store

__all__ = ["clock", "store"]

UTTERANCE = (
    "Thanks for calling Sunny Solar today. "
    "We install panels and batteries for homes. "
    "Would you like to book a free visit?"
)


@pytest.fixture
async def cartesia() -> AsyncIterator[CartesiaSimulator]:
    async with utils.http_context.open(), CartesiaSimulator() as sim:
        yield sim


async def _attempts(sim: CartesiaSimulator) -> list[dict[str, object]]:
    """The simulator's own record of what reached it (``GET /_sim/attempts``)."""
    origin = sim.base_url.split("/v1")[0].rstrip("/")
    async with aiohttp.ClientSession() as http, http.get(f"{origin}/_sim/attempts") as resp:
        rows: list[dict[str, object]] = await resp.json()
    return rows


async def test_one_cartesia_websocket_carries_the_whole_utterance(
    cartesia: CartesiaSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    spec = ProviderSpec("tts", "cartesia", base_url=cartesia.base_url, api_key="sim-key")
    chains = build_chains([spec], store, clock=clock, probes=False)
    try:
        spoken = await speak(chains.tts, UTTERANCE, time.perf_counter)  # pushed as an LLM writes
    finally:
        await chains.aclose()
    assert spoken.error is None and spoken.pcm.size > 24_000 * 4  # three sentences of speech
    routes = [str(a["route"]) for a in await _attempts(cartesia)]
    assert routes.count("GET /tts/websocket") == 1, routes  # one connection...
    assert routes.count(WS_ROUTE) == 1, routes  # ...one context for all three sentences
    assert not [r for r in routes if "/tts/bytes" in r]  # no sentence went by HTTP
    assert [s for _, s in chains.tts.delivered] == [
        "Thanks for calling Sunny Solar today.",
        "We install panels and batteries for homes.",
        "Would you like to book a free visit?",
    ]


class Recorder(ChainObserver):
    def __init__(self) -> None:
        self.switches: list[ChainSwitch] = []
        self.served: list[ChainServed] = []

    def on_switch(self, event: ChainSwitch) -> None:
        self.switches.append(event)

    def on_served(self, event: ChainServed) -> None:
        self.served.append(event)


async def test_a_guarded_member_comes_back_through_its_probe_not_a_replay(
    store: DocumentStore, clock: FakeClock
) -> None:
    async with OpenAISimulator() as sim:
        spec = ProviderSpec("llm", "openai", base_url=sim.base_url, api_key="sim-key")
        chains = build_chains(
            [spec],
            store,
            clock=clock,
            probes=False,
            deadlines={"llm": DeadlineSettings(floor_s=0.3, ceiling_s=0.8, stall_s=0.5)},
        )
        recorder = Recorder()
        chains.llm.chain.subscribe(recorder)
        tracker = SwitchTracker(chains)
        events: list[tuple[str, bool]] = []
        chains.llm.on(
            "llm_availability_changed", lambda ev: events.append((ev.llm.label, ev.available))
        )
        primary_model = chains.llm.model
        try:
            sim.state.plan.once(Fault(FaultType.STATUS, status=500))
            assert await ask(chains.llm, "What does it cost?")  # the floor answered
            assert events == [("guarded[llm:openai]", False)]
            assert chains.llm.model != primary_model  # LiveKit's property: the floor serves next
            assert [(s.from_key, s.to_key, s.reason) for s in recorder.switches] == [
                ("llm:openai", "llm:free-llm", "500 server error")
            ]
            assert recorder.served[-1].key == "llm:free-llm"
            assert tracker.switches == [
                SwitchEvent(
                    tracker.switches[0].at_s, "llm", "openai", "free-llm", "500 server error"
                )
            ]
            seen = sim.state.log.count()

            assert await ask(chains.llm, "And the trial?")  # refused by the open breaker
            assert sim.state.log.count() == seen  # LiveKit would replay it; the guard did not

            clock.advance(3600)
            assert await chains.probers["llm:openai"].try_probe() is True
            assert sim.state.log.count() == seen + 1  # one synthetic probe
            assert events[-1] == ("guarded[llm:openai]", True)
            assert chains.llm.model == primary_model
            assert (
                recorder.switches[-1].is_recovery and recorder.switches[-1].to_key == "llm:openai"
            )
            assert tracker.current("llm") == "openai"
            assert await ask(chains.llm, "Great.")
            assert recorder.served[-1].key == "llm:openai"
        finally:
            tracker.close()
            await chains.aclose()


async def test_silence_fails_over_unless_it_is_legitimate() -> None:
    quiet, loud = FakeTTS("quiet", silent=True), FakeTTS("loud")
    strict = TTSFallbackAdapter([quiet, loud], max_retry_per_tts=0)
    spoken = await speak(strict, "Hello there. How are you?", time.perf_counter)
    assert spoken.error is None and strict.metrics_metadata["model_name"] == "loud-model"
    assert strict.delivered and all(voice == "fake.loud" for voice, _ in strict.delivered)
    await strict.aclose()

    # a primary that is down, then a voice whose silence is legitimate: it serves
    down, quiet, loud = FakeTTS("down", down=True), FakeTTS("quiet", silent=True), FakeTTS("loud")
    lenient = TTSFallbackAdapter([down, quiet, loud], max_retry_per_tts=0, silence_is_failure=False)
    spoken = await speak(lenient, "Hello there. How are you?", time.perf_counter)
    assert spoken.error is None and spoken.pcm.size > 0
    assert lenient.metrics_metadata["model_name"] == "quiet-model"
    assert not loud.streams and not loud.synthesized
    await lenient.aclose()


class Reversed:
    """A selector that tries a tier's members last first (a stand-in for load balancing)."""

    def order(self, tier: Sequence[int]) -> Sequence[int]:
        return list(reversed(tier))


async def test_a_selector_orders_the_members_of_a_tier() -> None:
    a, b, floor = FakeLLM("a", text="from a"), FakeLLM("b", text="from b"), FakeLLM("floor")
    adapter = LLMFallbackAdapter([a, b, floor], tiers=[0, 0, 1], selector=Reversed())
    assert (await ask(adapter, "hi")).strip() == "from b"
    assert adapter.chain.order() == [1, 0, 2]
    b.health.down = True
    assert (await ask(adapter, "hi")).strip() == "from a"  # the tier's other member, then the floor
    await adapter.aclose()


async def test_an_unguarded_chain_names_members_by_label_and_keys_can_be_given() -> None:
    a, b = FakeLLM("a", down=True), FakeLLM("b")
    adapter = LLMFallbackAdapter([a, b])
    assert adapter.chain.keys == ["fake.a", "fake.b"]
    recorder = Recorder()
    adapter.chain.subscribe(recorder)
    await ask(adapter, "hi")
    assert [(s.from_key, s.to_key) for s in recorder.switches] == [("fake.a", "fake.b")]
    await adapter.aclose()
    with pytest.raises(ValueError, match="2 keys given for 1 llm members"):
        LLMFallbackAdapter([FakeLLM("x")], keys=["llm:x", "llm:y"])
    assert isinstance(adapter, llm.FallbackAdapter)  # a drop-in: still LiveKit's type
