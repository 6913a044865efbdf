"""An LLM answer cut mid-stream continues on the next provider: real plugins, real simulators."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from livekit.agents import llm

from bench.midstream_support import answer, with_stock_adapters, words
from plugins.chain import Chains, build_chains
from plugins.fallback import LLMFallbackAdapter
from plugins.fallback.align import Aligner
from plugins.resilience.deadlines import DeadlineSettings
from plugins.resilience.store import DocumentStore
from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec
from tests.guard_fixtures import FakeClock, RecordingObserver, clock, store

__all__ = ["clock", "store"]

FAST = {"llm": DeadlineSettings(floor_s=0.3, ceiling_s=0.8, stall_s=0.5)}
QUESTION = "Hi, what do you sell and how much does it cost?"


@pytest.fixture
async def sims() -> AsyncIterator[tuple[OpenAISimulator, OpenAISimulator]]:
    async with (
        OpenAISimulator(flavor="openrouter") as primary,
        OpenAISimulator() as secondary,
    ):
        yield primary, secondary


def _chains(
    sims: tuple[OpenAISimulator, OpenAISimulator],
    store: DocumentStore,
    clock: FakeClock,
    *,
    midstream: bool = True,
    secondary_extra: dict[str, str] | None = None,
    observer: RecordingObserver | None = None,
) -> Chains:
    primary, secondary = sims
    specs = [
        ProviderSpec("llm", "openrouter", base_url=primary.base_url, api_key="sim-key"),
        ProviderSpec(
            "llm",
            "openai",
            base_url=secondary.base_url,
            api_key="sim-key",
            model="gpt-4o-mini",
            extra=secondary_extra or {},
        ),
    ]
    chains = build_chains(
        specs,
        store,
        deadlines=FAST,
        clock=clock,
        probes=False,
        observers=[observer] if observer else [],
    )
    return chains if midstream else with_stock_adapters(chains)


def _chats(sim: OpenAISimulator) -> int:
    """Chat requests the simulator got (a warm-up's ``GET /models`` is not one)."""
    return sum(1 for a in sim.state.log.items() if a.route.endswith("/chat/completions"))


async def _expected(sims: tuple[OpenAISimulator, OpenAISimulator], store: DocumentStore) -> str:
    chains = _chains(sims, store, FakeClock())
    try:
        heard = await answer(chains.llm, QUESTION, time.perf_counter)
    finally:
        await chains.aclose()
    assert heard.error is None and len(words(heard.text)) > 8
    for sim in sims:
        sim.state.log.clear()
    return heard.text


async def test_cut_mid_answer_continues_without_repeating_a_word(
    sims: tuple[OpenAISimulator, OpenAISimulator], store: DocumentStore, clock: FakeClock
) -> None:
    expected = await _expected(sims, store)
    sims[0].state.plan.once(Fault(FaultType.CUT, after_chunks=4))
    chains = _chains(sims, store, clock)
    try:
        heard = await answer(chains.llm, QUESTION, time.perf_counter)
    finally:
        await chains.aclose()
    assert heard.error is None
    assert words(heard.text) == words(expected)  # every word once, in order
    assert _chats(sims[0]) == 1 and _chats(sims[1]) == 1
    assert isinstance(chains.llm, LLMFallbackAdapter)


async def test_stock_adapter_presents_the_cut_answer_as_an_error_after_partial_text(
    sims: tuple[OpenAISimulator, OpenAISimulator], store: DocumentStore, clock: FakeClock
) -> None:
    """The baseline this feature fixes: LiveKit stops after the cut, words are missing."""
    expected = await _expected(sims, store)
    sims[0].state.plan.once(Fault(FaultType.CUT, after_chunks=4))
    chains = _chains(sims, store, clock, midstream=False)
    try:
        heard = await answer(chains.llm, QUESTION, time.perf_counter)
    finally:
        await chains.aclose()
    assert len(words(heard.text)) < len(words(expected))


async def test_stall_mid_answer_continues_on_the_next_provider(
    sims: tuple[OpenAISimulator, OpenAISimulator], store: DocumentStore, clock: FakeClock
) -> None:
    expected = await _expected(sims, store)
    sims[0].state.plan.once(Fault(FaultType.STALL, after_chunks=5))
    observer = RecordingObserver()
    chains = _chains(sims, store, clock, observer=observer)
    try:
        heard = await answer(chains.llm, QUESTION, time.perf_counter)
    finally:
        await chains.aclose()
    assert heard.error is None
    assert words(heard.text) == words(expected)
    assert "stall" in observer.kinds("llm:openrouter")


@pytest.mark.parametrize("reply", ["", "   \n  "])
async def test_empty_or_blank_reply_counts_as_a_failure(
    sims: tuple[OpenAISimulator, OpenAISimulator],
    store: DocumentStore,
    clock: FakeClock,
    reply: str,
) -> None:
    expected = await _expected(sims, store)
    if reply:
        sims[0].brain.script_replies([reply])
    else:
        sims[0].state.plan.once(Fault(FaultType.EMPTY))
    observer = RecordingObserver()
    chains = _chains(sims, store, clock, observer=observer)
    try:
        heard = await answer(chains.llm, QUESTION, time.perf_counter)
    finally:
        await chains.aclose()
    assert heard.error is None and words(heard.text) == words(expected)
    assert observer.kinds("llm:openrouter") == ["empty_result"]


async def test_refused_prefill_restarts_cleanly_and_keeps_the_real_error(
    sims: tuple[OpenAISimulator, OpenAISimulator], store: DocumentStore, clock: FakeClock
) -> None:
    """The fallback is told it continues prefills, but refuses this one with a 400."""
    expected = await _expected(sims, store)
    sims[0].state.plan.once(Fault(FaultType.CUT, after_chunks=4))
    sims[1].state.plan.once(Fault(FaultType.STATUS, status=400))
    observer = RecordingObserver()
    chains = _chains(sims, store, clock, secondary_extra={"prefill": "continue"}, observer=observer)
    try:
        heard = await answer(chains.llm, QUESTION, time.perf_counter)
    finally:
        await chains.aclose()
    assert heard.error is None and words(heard.text) == words(expected)
    assert _chats(sims[1]) == 2  # the prefill, then the clean restart
    assert observer.kinds("llm:openai") == ["request_fault"]  # not held against its health
    assert "truncated" in observer.kinds("llm:openrouter") or observer.kinds("llm:openrouter")


async def test_a_truncated_answer_nobody_can_finish_ends_in_an_error(
    sims: tuple[OpenAISimulator, OpenAISimulator], store: DocumentStore
) -> None:
    """Without a floor that can finish it, the caller's stream ends in an error, not a cut."""
    primary, secondary = sims
    primary.state.plan.once(Fault(FaultType.CUT, after_chunks=4))
    secondary.state.plan.always(Fault(FaultType.STATUS, status=500))
    members = [
        llm_for(primary.base_url + "", "openrouter/auto"),
        llm_for(secondary.base_url, "gpt-4o-mini"),
    ]
    adapter = LLMFallbackAdapter(members)
    heard = await answer(adapter, QUESTION, time.perf_counter)
    await adapter.aclose()
    assert heard.text and heard.error is not None and "incomplete" in heard.error


async def test_a_tool_call_already_emitted_is_not_asked_for_again(
    sims: tuple[OpenAISimulator, OpenAISimulator], store: DocumentStore, clock: FakeClock
) -> None:
    primary, secondary = sims
    primary.brain.script_tool_call("book_meeting", {"when": "tomorrow 10am"}, text="One moment.")
    # the stream dies after the tool call was complete (its finish chunk), before [DONE]
    primary.state.plan.once(Fault(FaultType.CUT, after_chunks=7))
    secondary.brain.script_tool_call("book_meeting", {"when": "tomorrow 10am"})
    chains = _chains(sims, store, clock)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="Book me for tomorrow at ten.")
    calls: list[str] = []

    @llm.function_tool
    async def book_meeting(when: str) -> str:
        """Book a meeting."""
        return "booked"

    try:
        async with chains.llm.chat(chat_ctx=ctx, tools=[book_meeting]) as stream:
            async for chunk in stream:
                if chunk.delta:
                    calls += [c.name for c in chunk.delta.tool_calls]
    finally:
        await chains.aclose()
    assert calls == ["book_meeting"]
    assert _chats(secondary) == 0  # nobody was asked to produce it again


def test_aligner_skips_what_was_said_and_never_repeats_a_heard_sentence() -> None:
    a = Aligner("We sell solar panels. They cost", continues=False)
    out = "".join(a.feed(p) for p in ["We sell ", "solar panels.", " They cost", " ten dollars."])
    assert out == " ten dollars."
    b = Aligner("We sell solar panels. They cost", continues=False)
    out = "".join(b.feed(p) for p in ["We sell solar panels.", " Prices start at ten."])
    assert words(out) == words("Prices start at ten.")
    c = Aligner("We sell solar", continues=True)
    assert words(c.feed(" panels and batteries.") + c.finish()) == ["panels", "and", "batteries"]


def llm_for(base_url: str, model: str) -> llm.LLM[object]:
    from livekit.plugins import openai

    return openai.LLM(api_key="sim-key", base_url=base_url, model=model)


async def test_hedge_keeps_the_first_answer_and_closes_the_late_primary(
    sims: tuple[OpenAISimulator, OpenAISimulator], store: DocumentStore, clock: FakeClock
) -> None:
    primary, secondary = sims
    expected = await _expected(sims, store)
    observer = RecordingObserver()
    specs = [
        ProviderSpec("llm", "openrouter", base_url=primary.base_url, api_key="sim-key"),
        ProviderSpec("llm", "openai", base_url=secondary.base_url, api_key="sim-key"),
    ]
    chains = build_chains(
        specs,
        store,
        deadlines={"llm": DeadlineSettings(floor_s=0.5, ceiling_s=2.0, stall_s=1.0)},
        clock=clock,
        probes=False,
        hedge_requests=True,
        observers=[observer],
    )
    try:
        for _ in range(5):  # the primary's p95 is learned
            assert (await answer(chains.llm, QUESTION, time.perf_counter)).error is None
        primary.state.log.clear()
        primary.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=1.5))
        heard = await answer(chains.llm, QUESTION, time.perf_counter)
    finally:
        await chains.aclose()
    assert heard.error is None and words(heard.text) == words(expected)
    assert _chats(secondary) == 1  # the hedge answered
    assert _chats(primary) == 1  # the late primary was asked once, then closed
    assert observer.kinds("llm:openrouter") == []  # losing a race is not a failure
