"""The real LiveKit ElevenLabs plugin against the ElevenLabs simulator, through every fault."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError
from livekit.plugins import elevenlabs

from plugins.local.audio import is_silent
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.sim.faults import Fault, FaultType
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
MODES = [pytest.param(True, id="websocket"), pytest.param(False, id="http")]
VOICE = "hpp4J3VqNfWAUOO0d1Us"


@pytest.fixture(autouse=True, scope="module")
def _engines() -> None:
    load_engines()


@pytest.fixture
async def sim() -> AsyncIterator[ElevenLabsSimulator]:
    async with ElevenLabsSimulator() as s:
        yield s
    assert sim_tasks() == []  # nothing of the simulator outlives it


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_tts(
    sim: ElevenLabsSimulator,
    http: aiohttp.ClientSession,
    *,
    key: str = "sim-key",
    encoding: str = "pcm_16000",
) -> elevenlabs.TTS:
    return elevenlabs.TTS(
        api_key=key,
        base_url=sim.base_url,
        http_session=http,
        encoding=encoding,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("streaming", MODES)
@pytest.mark.parametrize(("encoding", "rate"), [("mp3_22050_32", 22050), ("pcm_24000", 24000)])
async def test_speaks_the_text_in_the_requested_format(
    sim: ElevenLabsSimulator,
    http: aiohttp.ClientSession,
    streaming: bool,
    encoding: str,
    rate: int,
) -> None:
    """mp3_22050_32 is the plugin's default; the simulator really encodes MP3 (LAME)."""
    engine = make_tts(sim, http, encoding=encoding)
    result = await run_tts(engine, TEXT, streaming=streaming, conn=fast(2.0))

    assert result.error is None
    assert result.sample_rate == rate
    assert 0.15 * len(TEXT.split()) < result.seconds < 0.8 * len(TEXT.split())
    assert result.loudness_dbfs > -35
    assert overlap(transcribe(result.pcm, rate), words_of(TEXT)) >= 0.6
    if streaming:  # character alignment reaches the plugin's aligned transcript
        assert [w.strip(".,") for w in result.words] == [w.strip(".,") for w in TEXT.split()]
        assert sim.state.log.count(f"WS /v1/text-to-speech/{VOICE}/multi-stream-input") == 1
    else:
        assert sim.state.log.count(f"POST /v1/text-to-speech/{VOICE}/stream") == 1
    await engine.aclose()


async def test_subscription_reports_characters_and_set_quota_refuses_at_the_limit(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession
) -> None:
    engine = make_tts(sim, http)
    assert (await run_tts(engine, TEXT, streaming=False)).error is None
    sim.set_quota(len(TEXT) + 10)  # what is left: 10 characters
    assert (await run_tts(engine, "Short one.", streaming=False)).error is None
    refused = await run_tts(engine, TEXT, streaming=False)

    async with http.get(
        sim.base_url + "/user/subscription", headers={"xi-api-key": "sim-key"}
    ) as resp:
        sub = await resp.json()
    assert isinstance(refused.error, APIStatusError)
    assert refused.error.status_code == 401  # ElevenLabs answers quota with a 401
    assert sub["character_count"] == len(TEXT) + len("Short one.")
    assert sub["character_limit"] == len(TEXT) + 10
    assert sub["next_character_count_reset_unix"] > time.time()


async def test_error_bodies_are_elevenlabs_detail_objects(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession
) -> None:
    url = f"{sim.base_url}/text-to-speech/{VOICE}/stream?output_format=pcm_16000"
    body = {"text": "hello there", "model_id": "eleven_turbo_v2_5"}
    ok = {"xi-api-key": "sim-key"}
    sim.state.plan.once(Fault(FaultType.QUOTA))
    sim.state.plan.once(Fault(FaultType.STATUS, message="system_busy", retry_after_s=4))
    sim.state.plan.once(Fault(FaultType.STATUS, status=429))
    sim.state.plan.once(Fault(FaultType.STATUS, status=502))

    async with http.post(url, json=body, headers=ok) as quota:
        detail = (await quota.json())["detail"]
        assert (quota.status, detail["status"]) == (401, "quota_exceeded")
        assert "exceeds your quota" in detail["message"]
    async with http.post(url, json=body, headers=ok) as busy:
        assert (busy.status, (await busy.json())["detail"]["status"]) == (429, "system_busy")
        assert busy.headers["Retry-After"] == "4"
    async with http.post(url, json=body, headers=ok) as limited:
        detail = (await limited.json())["detail"]
        assert (limited.status, detail["status"]) == (429, "too_many_concurrent_requests")
        assert "Retry-After" not in limited.headers
    async with http.post(url, json=body, headers=ok) as gateway:
        assert gateway.status == 502 and gateway.content_type == "text/html"
    async with http.post(url, json=body, headers={"xi-api-key": "bad-key"}) as bad:
        assert (await bad.json())["detail"]["status"] == "invalid_api_key"
    async with http.post(url, json={"model_id": "x"}, headers=ok) as invalid:
        assert invalid.status == 422


@pytest.mark.parametrize("streaming", MODES)
async def test_rejected_key_is_a_401(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession, streaming: bool
) -> None:
    result = await run_tts(make_tts(sim, http, key="bad-key"), TEXT, streaming=streaming)

    assert isinstance(result.error, APIStatusError)
    assert result.error.status_code == 401


@pytest.mark.parametrize("streaming", MODES)
@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault(FaultType.STATUS, status=403), 403),
        (Fault(FaultType.STATUS, status=429, retry_after_s=2), 429),
        (Fault(FaultType.STATUS, status=500), 500),
        (Fault(FaultType.STATUS, status=502), 502),
        (Fault(FaultType.STATUS, status=503), 503),
    ],
)
async def test_refusals_reach_the_plugin_as_status_errors(
    sim: ElevenLabsSimulator,
    http: aiohttp.ClientSession,
    streaming: bool,
    fault: Fault,
    status: int,
) -> None:
    sim.state.plan.once(fault)
    result = await run_tts(make_tts(sim, http), TEXT, streaming=streaming)

    assert isinstance(result.error, APIStatusError)
    assert result.error.status_code == status


async def test_quota_on_the_websocket_is_a_1008_close_and_the_reason_is_lost(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.QUOTA))
    result = await run_tts(make_tts(sim, http), TEXT, streaming=True)

    # the socket opens, the first text is refused with close code 1008 + the quota message;
    # the plugin keeps only the code
    assert isinstance(result.error, APIStatusError)
    assert result.error.status_code == 1008
    assert "quota" not in str(result.error)


async def test_in_band_error_frame_fails_the_context(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.IN_BAND_ERROR, after_chunks=2))
    streamed = await run_tts(make_tts(sim, http), TEXT, streaming=True)
    sim.state.plan.once(Fault(FaultType.IN_BAND_ERROR))
    posted = await run_tts(make_tts(sim, http), TEXT, streaming=False)

    # the plugin wraps the frame's error as APIStatusError(-1, "Could not synthesize")
    assert isinstance(streamed.error, APIStatusError) and streamed.error.status_code == -1
    assert "internal error" in str(streamed.error.__cause__)
    assert 0 < streamed.seconds <= 2 * 0.05 + 0.01
    # a JSON error under a 200: the plugin refuses non-audio content
    assert isinstance(posted.error, APIError)
    assert posted.frames == []


@pytest.mark.parametrize("streaming", MODES)
async def test_reset_before_any_byte_is_a_connection_error(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession, streaming: bool
) -> None:
    # aiohttp retries an idempotent GET (the handshake) once after a disconnect
    sim.state.plan.once(Fault(FaultType.RESET), times=2)
    result = await run_tts(make_tts(sim, http), TEXT, streaming=streaming)

    assert isinstance(result.error, APIStatusError | APIConnectionError)
    assert result.frames == []
    assert sim.state.log.items()[0].fault == "reset"


async def test_hang_times_out_on_the_websocket_and_shutdown_releases_http(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.always(Fault(FaultType.HANG))
    streamed = await run_tts(make_tts(sim, http), TEXT, streaming=True, conn=fast(0.3))
    assert isinstance(streamed.error, APITimeoutError)

    # the HTTP path bounds only the connect (total=30 s): still waiting after 1 s
    pending = asyncio.create_task(run_tts(make_tts(sim, http), TEXT, streaming=False))
    done, _ = await asyncio.wait({pending}, timeout=1.0)
    assert not done
    assert sim_tasks()  # the parked handler is there, and the leak check can see it
    await sim.aclose()
    posted = await asyncio.wait_for(pending, 5)
    assert isinstance(posted.error, APIConnectionError)
    assert sim_tasks() == []


async def test_slow_first_audio_within_and_beyond_the_timeout(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=0.4))
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = await run_tts(make_tts(sim, http), TEXT, streaming=True, conn=fast(2.0))
    assert slow.error is None and slow.seconds > 1.0
    assert loop.time() - started >= 0.4

    sim.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=3.0))
    too_slow = await run_tts(make_tts(sim, http), TEXT, streaming=True, conn=fast(0.3))
    # the context's idle timer fires; the plugin wraps it as APIStatusError(-1)
    assert isinstance(too_slow.error, APIStatusError) and too_slow.error.status_code == -1
    assert isinstance(too_slow.error.__cause__, APITimeoutError)


@pytest.mark.parametrize("streaming", MODES)
async def test_cut_midway_fails_after_partial_audio(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession, streaming: bool
) -> None:
    sim.state.plan.once(Fault(FaultType.CUT, after_chunks=3))
    result = await run_tts(make_tts(sim, http), TEXT, streaming=streaming)

    assert isinstance(result.error, APIError)
    assert 0 < result.seconds <= 3 * 0.05 + 0.01


async def test_stall_midway_times_out_on_the_websocket(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.STALL, after_chunks=3))
    result = await run_tts(make_tts(sim, http), TEXT, streaming=True, conn=fast(0.4))

    assert isinstance(result.error, APIStatusError) and result.error.status_code == -1
    assert isinstance(result.error.__cause__, APITimeoutError)
    assert 0 < result.seconds <= 3 * 0.05 + 0.01


@pytest.mark.parametrize("streaming", MODES)
async def test_malformed_reply_fails(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession, streaming: bool
) -> None:
    sim.state.plan.once(Fault(FaultType.MALFORMED, after_chunks=2))
    result = await run_tts(make_tts(sim, http), TEXT, streaming=streaming)

    assert isinstance(result.error, APIError)


@pytest.mark.parametrize("streaming", MODES)
async def test_empty_audio_is_an_error_and_silent_audio_is_not(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession, streaming: bool
) -> None:
    sim.state.plan.once(Fault(FaultType.EMPTY))
    empty = await run_tts(make_tts(sim, http), TEXT, streaming=streaming)
    sim.state.plan.once(Fault(FaultType.SILENT))
    silent = await run_tts(make_tts(sim, http), TEXT, streaming=streaming)

    assert isinstance(empty.error, APIError) and "no audio frames" in str(empty.error)
    assert silent.error is None
    assert silent.seconds > 0.15 * len(TEXT.split())
    assert is_silent(silent.pcm)


async def test_single_context_stream_input_socket(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession
) -> None:
    """The older ``stream-input`` protocol: init, text, ``""`` to end, then ``isFinal``."""
    url = (
        sim.base_url.replace("http", "ws", 1)
        + f"/text-to-speech/{VOICE}/stream-input?model_id=eleven_flash_v2_5&output_format=pcm_16000"
    )
    audio = bytearray()
    final = False
    async with http.ws_connect(url, headers={"xi-api-key": "sim-key"}) as ws:
        await ws.send_json({"text": " ", "voice_settings": {"stability": 0.5}})
        await ws.send_json({"text": "Hello from the simulator. ", "try_trigger_generation": True})
        await ws.send_json({"text": ""})
        async for msg in ws:
            data = msg.json()
            if data.get("audio"):
                audio += base64.b64decode(data["audio"])
            final = final or bool(data.get("isFinal"))
        assert ws.close_code == 1000

    assert final
    assert len(audio) / 2 / 16000 > 0.5


async def test_a_sixth_open_context_closes_the_socket_like_elevenlabs(
    sim: ElevenLabsSimulator, http: aiohttp.ClientSession
) -> None:
    url = (
        sim.base_url.replace("http", "ws", 1)
        + f"/text-to-speech/{VOICE}/multi-stream-input?model_id=eleven_flash_v2_5"
        + "&output_format=pcm_16000"
    )
    async with http.ws_connect(url, headers={"xi-api-key": "sim-key"}) as ws:
        for n in range(6):
            await ws.send_json({"text": " ", "context_id": f"ctx-{n}"})
        msg = await ws.receive(timeout=5)

    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1008
    assert "Maximum simultaneous contexts" in str(msg.extra)
