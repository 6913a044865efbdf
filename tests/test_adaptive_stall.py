"""Stall deadlines learned from each provider's own gaps between chunks (issue 15, part 5).

A provider that streams every few milliseconds is failed over a fraction of a second into a
stall; one that is slow in its usual way (long, steady gaps) has those gaps in its own samples
and is never failed over for them. The LLM cases pace a fake plugin (the provider's timing is
what is under test); the TTS case drives the real Cartesia plugin against its simulator.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from livekit.agents import llm, utils
from livekit.agents.llm import ChatChunk, ChoiceDelta

from bench.midstream_support import speak
from plugins.chain import build_chains
from plugins.resilience.deadlines import DEFAULT_DEADLINES, DeadlineSettings, Rhythm
from plugins.resilience.failures import ClassifiedError
from plugins.resilience.guard import Guard
from plugins.resilience.guard_llm import GuardedLLM
from plugins.resilience.store import DocumentStore
from plugins.resilience.types import FailureKind
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.spec import ProviderSpec
from tests.fallback_fakes import FakeLLM
from tests.guard_fixtures import FakeClock, RecordingObserver, clock, store

__all__ = ["clock", "store"]

KEY = "llm:paced"
SETTINGS = DeadlineSettings(
    floor_s=0.3,
    ceiling_s=0.8,
    stall_s=2.0,
    stall_floor_s=0.15,
    stall_factor=2.0,
    stall_margin_s=0.1,
    stall_min_samples=5,
)


class PacedLLM(FakeLLM):
    """Streams one word per chunk with the given gaps; ``stall_after`` chunks, then silence."""

    def __init__(self, gaps: Sequence[float]) -> None:
        super().__init__("paced", text=" ".join(f"w{i}" for i in range(len(gaps) + 1)))
        self.gaps = list(gaps)
        self.stall_after: int | None = None

    def chat(self, **kw: Any) -> llm.LLMStream:
        self.calls.append(kw["conn_options"])
        return _PacedStream(self, **kw)


class _PacedStream(llm.LLMStream):
    def __init__(self, fake: PacedLLM, **kw: Any) -> None:
        for unused in ("parallel_tool_calls", "tool_choice", "extra_kwargs"):
            kw.pop(unused, None)
        super().__init__(fake, **kw)
        self._fake = fake

    async def _run(self) -> None:
        words = self._fake.text.split(" ")
        for i, word in enumerate(words):
            if i:
                if self._fake.stall_after is not None and i >= self._fake.stall_after:
                    await asyncio.Event().wait()  # the socket stays open; nothing comes
                await asyncio.sleep(self._fake.gaps[i - 1])  # the provider's own pace
            self._event_ch.send_nowait(
                ChatChunk(id="c", delta=ChoiceDelta(role="assistant", content=word + " "))
            )


async def _answer(model: llm.LLM[Any]) -> tuple[list[float], BaseException | None]:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="hi")
    times: list[float] = []
    try:
        async with model.chat(chat_ctx=ctx) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    times.append(time.perf_counter())
    except Exception as e:
        return times, e
    return times, None


def _guarded(gaps: Sequence[float], store: DocumentStore) -> tuple[GuardedLLM, PacedLLM]:
    from plugins.resilience.deadlines import AdaptiveDeadline

    inner = PacedLLM(gaps)
    return GuardedLLM(inner, Guard(KEY, store, deadline=AdaptiveDeadline(SETTINGS))), inner


def test_rhythm_is_bounded_and_starts_at_its_initial_value() -> None:
    r = Rhythm(
        floor_s=0.2, ceiling_s=2.0, initial_s=2.0, factor=2.0, margin_s=0.1, min_samples=3, window=5
    )
    assert r.deadline_s == 2.0 and r.usual_s is None  # nothing judged on an unmeasured rhythm
    for gap in (0.01, 0.02, 0.01):
        r.observe(gap)
    assert r.deadline_s == 0.2  # a fast stream: the floor
    for gap in (1.5, 1.5, 1.5):
        r.observe(gap)
    assert r.deadline_s == 2.0  # a slow one: the ceiling
    for gap in (0.3,) * 5:  # the window moves on: the slow phase is forgotten
        r.observe(gap)
    assert r.deadline_s == pytest.approx(0.7)
    r.observe(float("nan"))
    r.observe(-1.0)
    assert r.samples == 5


async def test_a_slow_but_steady_stream_is_not_failed_over(store: DocumentStore) -> None:
    """Gaps of 0.25 s, every answer: slower than a fast provider's learned deadline, and its own."""
    guarded, _ = _guarded([0.25] * 7, store)
    for _ in range(2):
        times, error = await _answer(guarded)
        assert error is None, error
        assert len(times) == 8
    # its own gaps earned it room: at least p99 (0.25 s, more on a loaded machine) x 2 + 0.1
    assert guarded.guard.deadline.stall_s >= 0.25 * 2 + 0.1 - 0.01
    await guarded.aclose()


async def test_a_stalled_stream_is_failed_within_its_learned_deadline(
    store: DocumentStore,
) -> None:
    guarded, inner = _guarded([0.01] * 9, store)
    times, error = await _answer(guarded)  # learns a fast rhythm
    assert error is None
    learned = guarded.guard.deadline.stall_s
    assert learned < 0.5  # the floor (0.15 s) on a quiet machine; never the 2 s ceiling
    inner.stall_after = 5
    times, error = await _answer(guarded)
    caught = time.perf_counter()
    assert len(times) == 5
    assert isinstance(error, ClassifiedError), error
    assert error.failure.kind is FailureKind.STALL
    # detected at its own deadline (not the 2 s ceiling), with a little slack for the loop
    assert learned - 0.02 <= caught - times[-1] < 1.0
    await guarded.aclose()


async def test_the_first_answer_is_judged_by_the_ceiling_until_its_rhythm_is_known(
    store: DocumentStore,
) -> None:
    """A slow first answer (0.5 s gaps) from a provider never measured is not failed."""
    guarded, _ = _guarded([0.5] * 4, store)
    times, error = await _answer(guarded)
    assert error is None and len(times) == 5
    await guarded.aclose()


# -- TTS: the real Cartesia plugin ----------------------------------------------------------------


@pytest.fixture
async def cartesia() -> AsyncIterator[CartesiaSimulator]:
    from plugins.local.hibari_tts import HibariEngine

    HibariEngine.shared().synthesize("warm up")
    async with utils.http_context.open(), CartesiaSimulator() as sim:
        yield sim


async def test_a_voice_learns_its_rhythm_and_a_stall_is_caught_inside_a_second(
    cartesia: CartesiaSimulator, store: DocumentStore, clock: FakeClock
) -> None:
    observer = RecordingObserver()
    spec = ProviderSpec("tts", "cartesia", base_url=cartesia.base_url, api_key="sim-key")
    chains = build_chains([spec], store, clock=clock, probes=False, observers=[observer])
    guarded = chains.guards["tts:cartesia"]
    try:
        for text in ("Hello there. How are you today?", "We install panels for homes."):
            spoken = await speak(chains.tts, text, time.perf_counter)
            assert spoken.error is None
        assert observer.kinds("tts:cartesia") == []  # healthy: never a false stall
        learned = guarded.guard.deadline.stall_s
        assert guarded.guard.deadline.gaps.samples >= 5
        assert DEFAULT_DEADLINES["tts"].stall_floor <= learned < 1.0
        cartesia.state.plan.once(Fault(FaultType.STALL, after_chunks=10))
        spoken = await speak(chains.tts, "Would you like to book a free visit?", time.perf_counter)
        assert spoken.error is None  # the floor voice finished it
        kinds = observer.kinds("tts:cartesia")
        assert kinds == ["stall"], kinds
        failure = observer.failures[0][1]
        # its own deadline (this utterance's gaps count too), not the 2 s ceiling
        match = re.search(r"within (\d+\.\d+)s", failure.message)
        assert match is not None, failure.message
        assert float(match.group(1)) < 1.0, failure.message
    finally:
        await chains.aclose()


# -- our own lost time is not the provider's ------------------------------------------------------


async def _source(delay_s: float) -> AsyncIterator[str]:
    await asyncio.sleep(delay_s)  # the provider's own pace
    yield "chunk"


async def test_a_wait_our_loop_overslept_is_extended_not_failed() -> None:
    from plugins.resilience.guard import Pump

    pump: Pump[str] = Pump(_source(0.05))
    # a CPU-bound neighbour holds the event loop for 0.5 s: nothing can be read meanwhile
    asyncio.get_running_loop().call_soon(time.sleep, 0.5)
    assert await pump.next(0.2) == "chunk"  # the chunk that waited unread is not a stall
    await pump.aclose()


async def test_a_source_that_is_really_late_still_times_out() -> None:
    from plugins.resilience.guard import Pump

    pump: Pump[str] = Pump(_source(5.0))
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await pump.next(0.2)
    assert time.perf_counter() - started < 1.0
    await pump.aclose()
