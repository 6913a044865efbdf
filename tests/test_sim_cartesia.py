"""The real LiveKit Cartesia plugin against the Cartesia simulator, through every fault."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError
from livekit.plugins import cartesia

from plugins.local.audio import is_silent
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.faults import Fault, FaultPlan, FaultType, SimState
from tests.sim_ws_fixtures import (
    fast,
    load_engines,
    overlap,
    run_tts,
    sim_tasks,
    transcribe,
    words_of,
)

TEXT = "Thanks for calling. We can book your demo for Tuesday morning."
MODES = [pytest.param(True, id="websocket"), pytest.param(False, id="bytes")]


@pytest.fixture(autouse=True, scope="module")
def _engines() -> None:
    load_engines()


@pytest.fixture
async def sim() -> AsyncIterator[CartesiaSimulator]:
    async with CartesiaSimulator() as s:
        yield s
    assert sim_tasks() == []  # nothing of the simulator outlives it


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_tts(
    sim: CartesiaSimulator, http: aiohttp.ClientSession, *, key: str = "sim-key", rate: int = 16000
) -> cartesia.TTS:
    return cartesia.TTS(api_key=key, base_url=sim.base_url, http_session=http, sample_rate=rate)


@pytest.mark.parametrize("streaming", MODES)
async def test_speaks_the_text_at_the_requested_rate(
    sim: CartesiaSimulator, http: aiohttp.ClientSession, streaming: bool
) -> None:
    result = await run_tts(make_tts(sim, http, rate=16000), TEXT, streaming=streaming)

    assert result.error is None
    assert result.sample_rate == 16000
    assert 0.15 * len(TEXT.split()) < result.seconds < 0.8 * len(TEXT.split())
    assert result.loudness_dbfs > -35
    # real speech of the text: the local recognizer hears most of the words
    assert overlap(transcribe(result.pcm, 16000), words_of(TEXT)) >= 0.6
    if streaming:  # word timestamps reach the plugin's aligned transcript
        assert [w.strip(".,") for w in result.words] == [w.strip(".,") for w in TEXT.split()]
    route = "WS /tts/websocket" if streaming else "POST /tts/bytes"
    assert sim.state.log.count(route) == 1


async def test_websocket_serves_several_contexts_on_one_pooled_socket(
    sim: CartesiaSimulator, http: aiohttp.ClientSession
) -> None:
    engine = make_tts(sim, http, rate=24000)
    first = await run_tts(engine, "Hello there.", streaming=True)
    second = await run_tts(engine, "Good to hear from you.", streaming=True)

    assert first.error is None and second.error is None
    assert first.sample_rate == second.sample_rate == 24000
    assert sim.state.log.count("GET /tts/websocket") == 1  # one handshake
    assert sim.state.log.count("WS /tts/websocket") == 2  # two generations
    await engine.aclose()


@pytest.mark.parametrize("streaming", MODES)
async def test_rejected_key_is_a_401(
    sim: CartesiaSimulator, http: aiohttp.ClientSession, streaming: bool
) -> None:
    result = await run_tts(make_tts(sim, http, key="bad-key"), TEXT, streaming=streaming)

    assert isinstance(result.error, APIStatusError)
    assert result.error.status_code == 401
    assert not result.error.retryable


async def test_error_bodies_and_retry_after_are_cartesias(
    sim: CartesiaSimulator, http: aiohttp.ClientSession
) -> None:
    body = {
        "model_id": "sonic-3",
        "transcript": "hi",
        "voice": {"mode": "id", "id": "v"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
    }
    headers = {"X-API-Key": "sim-key", "Cartesia-Version": "2025-04-16"}
    sim.state.plan.once(Fault(FaultType.QUOTA))
    sim.state.plan.once(Fault(FaultType.STATUS, status=429, retry_after_s=7))
    sim.state.plan.once(Fault(FaultType.STATUS, status=429))
    url = sim.base_url + "/tts/bytes"

    async with http.post(url, json=body, headers=headers) as quota:
        assert quota.status == 402
        assert "credits" in (await quota.json())["error"]
    async with http.post(url, json=body, headers=headers) as limited:
        assert limited.status == 429
        assert limited.headers["Retry-After"] == "7"
    async with http.post(url, json=body, headers=headers) as bare:
        assert bare.status == 429
        assert "Retry-After" not in bare.headers
    async with http.post(
        url, json={**body, "output_format": {"container": "mp4"}}, headers=headers
    ) as bad:
        assert bad.status == 400
        assert "container" in (await bad.json())["error"]


@pytest.mark.parametrize("streaming", MODES)
@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault(FaultType.QUOTA), 402),
        (Fault(FaultType.STATUS, status=403), 403),
        (Fault(FaultType.STATUS, status=429, retry_after_s=2), 429),
        (Fault(FaultType.STATUS, status=500), 500),
        (Fault(FaultType.STATUS, status=502), 502),
        (Fault(FaultType.STATUS, status=503), 503),
    ],
)
async def test_refusals_reach_the_plugin_as_status_errors(
    sim: CartesiaSimulator,
    http: aiohttp.ClientSession,
    streaming: bool,
    fault: Fault,
    status: int,
) -> None:
    sim.state.plan.once(fault)
    result = await run_tts(make_tts(sim, http), TEXT, streaming=streaming)

    assert isinstance(result.error, APIStatusError)
    assert result.error.status_code == status
    assert sim.state.log.items()[0].fault == fault.type.value


async def test_in_band_error_frame_is_read_as_done_by_the_plugin(
    sim: CartesiaSimulator, http: aiohttp.ClientSession
) -> None:
    """Cartesia error frames carry ``done: true``; the 1.8.9 plugin checks ``done`` first."""
    sim.state.plan.once(Fault(FaultType.IN_BAND_ERROR, after_chunks=0))
    before_audio = await run_tts(make_tts(sim, http), TEXT, streaming=True)
    sim.state.plan.once(Fault(FaultType.IN_BAND_ERROR, after_chunks=5))
    mid_stream = await run_tts(make_tts(sim, http), TEXT, streaming=True)

    # with no audio the base class notices; mid-stream the truncation passes as success
    assert isinstance(before_audio.error, APIError)
    assert "no audio frames" in str(before_audio.error)
    assert mid_stream.error is None
    assert 0 < mid_stream.seconds <= 5 * 0.04 + 0.01


async def test_reset_before_any_byte_is_a_connection_error(
    sim: CartesiaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.RESET))
    posted = await run_tts(make_tts(sim, http), TEXT, streaming=False)
    assert isinstance(posted.error, APIConnectionError)
    assert posted.frames == []

    # aiohttp retries an idempotent GET once after a disconnect (RFC 9112): a single reset on
    # the WebSocket handshake never reaches the plugin; a second one in a row does
    sim.state.plan.once(Fault(FaultType.RESET))
    retried = await run_tts(make_tts(sim, http), TEXT, streaming=True)
    assert retried.error is None
    sim.state.plan.once(Fault(FaultType.RESET), times=2)
    refused = await run_tts(make_tts(sim, http), TEXT, streaming=True)
    assert isinstance(refused.error, APIConnectionError)
    handshakes = [a.fault for a in sim.state.log.items() if a.route == "GET /tts/websocket"]
    assert handshakes == ["reset", None, "reset", "reset"]


async def test_hang_on_handshake_times_out_and_shutdown_releases_it(
    sim: CartesiaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.always(Fault(FaultType.HANG))
    result = await run_tts(make_tts(sim, http), TEXT, streaming=True, conn=fast(0.3))
    assert isinstance(result.error, APITimeoutError)

    # /tts/bytes only bounds the connect (total=30 s): the plugin is still waiting after 1 s
    engine = make_tts(sim, http)
    pending = asyncio.create_task(run_tts(engine, TEXT, streaming=False, conn=fast(0.3)))
    done, _ = await asyncio.wait({pending}, timeout=1.0)
    assert not done
    assert sim_tasks()  # the parked handler is there, and the leak check can see it
    await sim.aclose()  # the parked handler is released, nothing of the simulator lingers
    result = await asyncio.wait_for(pending, 5)
    assert isinstance(result.error, APIConnectionError)
    assert sim_tasks() == []


async def test_slow_first_audio_delays_but_completes(
    sim: CartesiaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=0.4))
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = await run_tts(make_tts(sim, http), TEXT, streaming=True, conn=fast(2.0))
    assert slow.error is None and slow.seconds > 1.0
    assert loop.time() - started >= 0.4

    sim.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=3.0))
    too_slow = await run_tts(make_tts(sim, http), TEXT, streaming=True, conn=fast(0.3))
    assert isinstance(too_slow.error, APITimeoutError)


@pytest.mark.parametrize("streaming", MODES)
async def test_cut_midway_fails_after_partial_audio(
    sim: CartesiaSimulator, http: aiohttp.ClientSession, streaming: bool
) -> None:
    sim.state.plan.once(Fault(FaultType.CUT, after_chunks=3))
    result = await run_tts(make_tts(sim, http), TEXT, streaming=streaming)

    assert isinstance(result.error, APIError)
    assert 0 < result.seconds <= 3 * 0.04 + 0.01


async def test_stall_midway_times_out_on_the_websocket(
    sim: CartesiaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.STALL, after_chunks=3))
    result = await run_tts(make_tts(sim, http), TEXT, streaming=True, conn=fast(0.4))

    assert isinstance(result.error, APITimeoutError)
    assert 0 < result.seconds <= 3 * 0.04 + 0.01


async def test_malformed_frame_breaks_the_websocket_stream(
    sim: CartesiaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.MALFORMED, after_chunks=2))
    result = await run_tts(make_tts(sim, http), TEXT, streaming=True)

    assert isinstance(result.error, APIConnectionError)


@pytest.mark.parametrize("streaming", MODES)
async def test_empty_audio_is_an_error_and_silent_audio_is_not(
    sim: CartesiaSimulator, http: aiohttp.ClientSession, streaming: bool
) -> None:
    sim.state.plan.once(Fault(FaultType.EMPTY))
    empty = await run_tts(make_tts(sim, http), TEXT, streaming=streaming)
    sim.state.plan.once(Fault(FaultType.SILENT))
    silent = await run_tts(make_tts(sim, http), TEXT, streaming=streaming)

    assert isinstance(empty.error, APIError) and "no audio frames" in str(empty.error)
    # silence of the right length passes as a success: only a loudness check can catch it
    assert silent.error is None
    assert silent.seconds > 0.15 * len(TEXT.split())
    assert is_silent(silent.pcm)


async def test_quota_counts_characters_across_requests(
    sim: CartesiaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.quota_after(len(TEXT) + 1)
    engine = make_tts(sim, http)
    first = await run_tts(engine, TEXT, streaming=False)
    second = await run_tts(engine, TEXT, streaming=False)
    third = await run_tts(engine, TEXT, streaming=False)

    assert first.error is None and second.error is None
    assert isinstance(third.error, APIStatusError) and third.error.status_code == 402
    assert [a.fault for a in sim.state.log.items()] == [None, None, "quota"]


async def test_control_routes_drive_the_plan_over_http(
    sim: CartesiaSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        sim.base_url + "/_sim/faults",
        json={"mode": "once", "fault": {"type": "status", "status": 503}},
    ) as resp:
        assert resp.status == 200
    result = await run_tts(make_tts(sim, http), TEXT, streaming=False)
    async with http.get(sim.base_url + "/_sim/attempts") as resp:
        attempts = await resp.json()

    assert isinstance(result.error, APIStatusError) and result.error.status_code == 503
    assert [(a["route"], a["fault"]) for a in attempts] == [("POST /tts/bytes", "status")]


async def test_flapping_follows_the_plan_clock(http: aiohttp.ClientSession) -> None:
    now = [0.0]
    state = SimState(plan=FaultPlan(clock=lambda: now[0]))
    state.plan.flapping(Fault(FaultType.STATUS, status=503), down_s=10, up_s=10)
    async with CartesiaSimulator(state) as sim:
        engine = make_tts(sim, http)
        down = await run_tts(engine, "Hello.", streaming=False)
        now[0] = 12.0
        up = await run_tts(engine, "Hello.", streaming=False)
        now[0] = 21.0
        down_again = await run_tts(engine, "Hello.", streaming=False)

    assert isinstance(down.error, APIStatusError) and down.error.status_code == 503
    assert up.error is None
    assert isinstance(down_again.error, APIStatusError)
