"""Deadlines run on run time: a starved event loop does not fail a healthy provider.

The loop is starved for real (a callback that blocks it with ``time.sleep``, as a CPU-bound
neighbour or a garbage-collection pause would), and the provider is the real LiveKit Cartesia
plugin against its simulator, under a first-audio deadline shorter than the starvation.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator

import pytest
from livekit.agents import utils
from livekit.plugins import cartesia

from plugins.resilience.deadlines import AdaptiveDeadline, DeadlineSettings
from plugins.resilience.failures import ClassifiedError
from plugins.resilience.guard import Guard, Pump
from plugins.resilience.guard_tts import GuardedTTS
from plugins.resilience.run_clock import BEAT_S, run_time
from plugins.resilience.store import DocumentStore
from plugins.resilience.types import FailureKind
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.faults import Fault, FaultType
from tests.guard_fixtures import RecordingObserver, clock, store, synthesize

__all__ = ["clock", "store"]

STARVED_S = 0.7
#: a first-audio deadline shorter than the starvation (no samples yet: the ceiling applies)
TIGHT = DeadlineSettings(floor_s=0.3, ceiling_s=0.5, stall_s=1.0)


def _starve_soon(seconds: float, after_s: float = 0.005) -> None:
    asyncio.get_running_loop().call_later(after_s, time.sleep, seconds)


async def test_run_time_stops_while_the_loop_is_blocked_and_runs_while_it_waits() -> None:
    start_wall = time.perf_counter()
    start_run = run_time()
    await asyncio.sleep(0.3)  # an idle wait: the loop could run all along
    waited = run_time() - start_run
    assert 0.28 < waited <= time.perf_counter() - start_wall
    before = run_time()
    time.sleep(0.4)  # this very callback starves the loop: the heartbeat cannot run
    during = run_time() - before
    assert during < 0.4 - 0.3  # the overdue heartbeat is left out even before it beats
    await asyncio.sleep(BEAT_S * 3)  # the heartbeat has now run and booked the lateness
    assert run_time() - before < 0.4 - 0.3 + BEAT_S * 3 + 0.05


def test_a_closed_loop_and_its_heartbeat_are_collected() -> None:
    def one_loop() -> weakref.ref[asyncio.AbstractEventLoop]:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(_read_clock())  # starts the loop's heartbeat
        loop.close()
        return weakref.ref(loop)

    gone = one_loop()
    gc.collect()
    assert gone() is None


async def _read_clock() -> float:
    run_time()
    await asyncio.sleep(BEAT_S * 3)  # a few beats
    return run_time()


async def test_run_time_never_goes_backwards_across_a_starved_beat() -> None:
    seen = [run_time()]
    for _ in range(5):
        time.sleep(0.05)  # late for the beat
        seen.append(run_time())
        await asyncio.sleep(0)  # let the heartbeat book it
        seen.append(run_time())
    assert seen == sorted(seen)


def test_outside_a_loop_run_time_is_wall_time() -> None:
    assert abs(run_time() - time.perf_counter()) < 0.01


async def test_a_pump_waits_out_a_starved_loop_for_an_item_that_came_in_time() -> None:
    async def source() -> AsyncIterator[str]:
        await asyncio.sleep(0.1)
        yield "chunk"

    pump: Pump[str] = Pump(source())
    _starve_soon(STARVED_S, after_s=0.02)
    try:
        assert await pump.next(0.3) == "chunk"  # 0.3 s of run time; 0.8 s of wall time
    finally:
        await pump.aclose()


@pytest.fixture
async def sim() -> AsyncIterator[CartesiaSimulator]:
    async with utils.http_context.open(), CartesiaSimulator() as s:
        yield s


async def _guarded(
    sim: CartesiaSimulator, store: DocumentStore, observer: RecordingObserver
) -> GuardedTTS:
    guard = Guard("tts:cartesia", store, deadline=AdaptiveDeadline(TIGHT), observers=[observer])
    return GuardedTTS(cartesia.TTS(api_key="sim-key", base_url=sim.base_url), guard)


async def test_a_starved_worker_does_not_fail_over_a_voice_that_answered_in_time(
    sim: CartesiaSimulator, store: DocumentStore
) -> None:
    observer = RecordingObserver()
    guarded = await _guarded(sim, store, observer)
    await synthesize(guarded, "Warm the voice up.")  # the simulator's voice loads once
    started = time.perf_counter()
    _starve_soon(STARVED_S)
    try:
        audio = await synthesize(guarded, "Thanks for calling, how can I help?")
    finally:
        await guarded.guard.drain()
        await guarded.aclose()
    assert time.perf_counter() - started > TIGHT.ceiling_s  # late by the wall clock
    assert len(audio) > 0
    assert observer.failures == []  # but not the provider's lateness


async def test_a_starved_worker_still_fails_over_a_voice_that_never_answers(
    sim: CartesiaSimulator, store: DocumentStore
) -> None:
    sim.state.plan.always(Fault(FaultType.HANG))
    observer = RecordingObserver()
    guarded = await _guarded(sim, store, observer)
    started = time.perf_counter()
    _starve_soon(STARVED_S)
    try:
        with pytest.raises(ClassifiedError):
            await synthesize(guarded, "Thanks for calling, how can I help?")
    finally:
        await guarded.guard.drain()
        await guarded.aclose()
    waited = time.perf_counter() - started
    # the deadline ran on run time: its 0.5 s plus the starvation, not forever
    assert STARVED_S + TIGHT.ceiling_s * 0.9 < waited < STARVED_S + TIGHT.ceiling_s + 1.0
    assert FailureKind.TIMEOUT.value in observer.kinds("tts:cartesia")
