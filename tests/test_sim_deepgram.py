"""The real LiveKit Deepgram plugin against the Deepgram simulator, through every fault.

The audio is real speech (the local neural voice) fed to the plugin as microphone frames; the
simulator transcribes what it hears, so a passing transcript means the words went through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from livekit.agents import APIConnectionError, APIStatusError, stt
from livekit.plugins import deepgram

from plugins.local.audio import silence
from plugins.sim.deepgram_sim import DeepgramSimulator
from plugins.sim.faults import Fault, FaultType
from tests.sim_ws_fixtures import (
    SttResult,
    consume,
    fast,
    frames_of,
    load_engines,
    overlap,
    run_stt,
    sim_tasks,
    spoken,
    words_of,
)

TEXT = "please call me back tomorrow morning about the new pricing plan"
SECOND = "the meeting is on friday afternoon"
Kind = stt.SpeechEventType


@pytest.fixture(autouse=True, scope="module")
def _engines() -> None:
    load_engines()


@pytest.fixture
async def sim() -> AsyncIterator[DeepgramSimulator]:
    async with DeepgramSimulator() as s:
        yield s
    assert sim_tasks() == []  # nothing of the simulator outlives it


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_stt(
    sim: DeepgramSimulator,
    http: aiohttp.ClientSession,
    *,
    key: str = "sim-key",
    interim_results: bool = False,  # fault tests skip interims: less recognizer CPU
) -> deepgram.STT:
    return deepgram.STT(
        api_key=key, base_url=sim.base_url, http_session=http, interim_results=interim_results
    )


async def test_live_transcript_is_the_words_spoken(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    result = await run_stt(make_stt(sim, http, interim_results=True), spoken(TEXT))

    assert result.error is None
    assert len(result.finals) == 1
    assert overlap(words_of(result.finals[0]), words_of(TEXT)) >= 0.8
    kinds = result.kinds()
    assert kinds.index(Kind.START_OF_SPEECH) < kinds.index(Kind.FINAL_TRANSCRIPT)
    assert kinds.index(Kind.FINAL_TRANSCRIPT) < kinds.index(Kind.END_OF_SPEECH)
    final = next(ev for ev in result.events if ev.type is Kind.FINAL_TRANSCRIPT)
    words = final.alternatives[0].words or []
    assert len(words) == len(final.alternatives[0].text.split())
    # word timings sit inside the speech, which starts after 0.3 s of lead-in silence
    assert 0.2 <= words[0].start_time < words[-1].end_time <= spoken(TEXT).size / 16000
    assert sim.state.log.count("WS /v1/listen") == 1


async def test_a_scripted_simulator_hears_its_script_without_recognising(
    http: aiohttp.ClientSession,
) -> None:
    """A load test's Deepgram: every utterance is heard as the script (a cloud recogniser
    decodes on the provider's machines, not on the worker's cores), interims grow word by word,
    and no PocketSphinx decoder is taken."""
    from plugins.local.sphinx_stt import SphinxEngine

    script = "I would like to know your pricing"
    engine = SphinxEngine.shared()
    acquire = engine.acquire
    taken: list[object] = []
    engine.acquire = lambda: taken.append(1) or acquire()  # type: ignore[method-assign]
    try:
        async with DeepgramSimulator(script=script, interim_every_s=0.5) as sim:
            result = await run_stt(make_stt(sim, http, interim_results=True), spoken(TEXT))
    finally:
        engine.acquire = acquire  # type: ignore[method-assign]
    assert result.error is None
    assert [words_of(text) for text in result.finals] == [words_of(script)]
    interims = [
        words_of(ev.alternatives[0].text)
        for ev in result.events
        if ev.type is Kind.INTERIM_TRANSCRIPT
    ]
    assert interims and all(words == words_of(script)[: len(words)] for words in interims)
    assert len(interims[0]) < len(words_of(script))
    assert taken == []


async def test_two_utterances_give_two_finals_in_order(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    audio = np.concatenate([spoken(TEXT), spoken(SECOND)])
    result = await run_stt(make_stt(sim, http, interim_results=True), audio, utterances=2)

    assert result.error is None
    assert len(result.finals) == 2
    assert overlap(words_of(result.finals[0]), words_of(TEXT)) >= 0.8
    assert overlap(words_of(result.finals[1]), words_of(SECOND)) >= 0.6
    assert result.kinds().count(Kind.END_OF_SPEECH) == 2


async def test_prerecorded_recognize_transcribes_the_wav(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    frames = list(frames_of(spoken(TEXT)))
    event = await make_stt(sim, http).recognize(frames, conn_options=fast(2.0))

    assert event.type is Kind.FINAL_TRANSCRIPT
    assert overlap(words_of(event.alternatives[0].text), words_of(TEXT)) >= 0.8
    assert sim.state.log.count("POST /v1/listen") == 1


async def test_rejected_key_is_a_401_on_the_handshake(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    result = await run_stt(make_stt(sim, http, key="bad-key"), spoken(TEXT))
    assert isinstance(result.error, APIStatusError)
    assert result.error.status_code == 401

    # the prerecorded path parses the error body as a transcript: the status is lost
    with pytest.raises(APIConnectionError):
        await make_stt(sim, http, key="bad-key").recognize(
            list(frames_of(spoken(TEXT))), conn_options=fast()
        )


async def test_error_bodies_and_retry_after_are_deepgrams(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.QUOTA))
    sim.state.plan.once(Fault(FaultType.STATUS, status=429, retry_after_s=3))
    sim.state.plan.once(Fault(FaultType.STATUS, status=429))
    url = sim.base_url + "?encoding=linear16&sample_rate=16000"
    auth = {"Authorization": "Token sim-key"}

    async with http.get(url, headers=auth) as quota:  # the WebSocket handshake, refused
        assert quota.status == 402
        assert (await quota.json())["err_code"] == "ASR_PAYMENT_REQUIRED"
        assert quota.headers["dg-error"]
    async with http.get(url, headers=auth) as limited:
        assert limited.status == 429
        assert limited.headers["Retry-After"] == "3"
    async with http.get(url, headers=auth) as bare:
        assert bare.status == 429
        assert "Retry-After" not in bare.headers
    async with http.get(url, headers={}) as anonymous:
        assert anonymous.status == 401
        assert (await anonymous.json())["err_code"] == "INVALID_AUTH"


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault(FaultType.QUOTA), 402),
        (Fault(FaultType.STATUS, status=403), 403),
        (Fault(FaultType.STATUS, status=429, retry_after_s=1), 429),
        (Fault(FaultType.STATUS, status=500), 500),
        (Fault(FaultType.STATUS, status=502), 502),
        (Fault(FaultType.STATUS, status=503), 503),
    ],
)
async def test_refused_handshake_reaches_the_plugin_as_status_error(
    sim: DeepgramSimulator, http: aiohttp.ClientSession, fault: Fault, status: int
) -> None:
    sim.state.plan.once(fault)
    result = await run_stt(make_stt(sim, http), spoken(TEXT))

    assert isinstance(result.error, APIStatusError)
    assert result.error.status_code == status
    assert result.finals == []


async def test_in_band_error_closes_the_socket_after_speech_started(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.IN_BAND_ERROR, after_chunks=1))
    result = await run_stt(make_stt(sim, http), spoken(TEXT))

    # Deepgram reports stream errors as a close frame (1011 + reason): the utterance is lost
    assert isinstance(result.error, APIStatusError)
    assert result.error.status_code == 1011
    assert Kind.START_OF_SPEECH in result.kinds()
    assert result.finals == []


async def test_reset_before_any_byte_is_a_connection_error(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    # aiohttp retries an idempotent GET once after a disconnect, so it takes two in a row
    sim.state.plan.once(Fault(FaultType.RESET), times=2)
    result = await run_stt(make_stt(sim, http), spoken(TEXT))

    assert isinstance(result.error, APIConnectionError)
    assert [a.fault for a in sim.state.log.items()] == ["reset", "reset"]


async def test_hang_on_handshake_fails_within_the_timeout_and_does_not_leak(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.always(Fault(FaultType.HANG))
    result = await run_stt(make_stt(sim, http), spoken(TEXT), conn=fast(0.3), deadline_s=5)

    assert isinstance(result.error, APIConnectionError)
    await sim.aclose()
    assert sim_tasks() == []


async def test_slow_first_result_still_transcribes(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=0.5))
    result = await run_stt(make_stt(sim, http), spoken(TEXT))

    assert result.error is None
    assert overlap(words_of(result.finals[0]), words_of(TEXT)) >= 0.8
    assert [a.fault for a in sim.state.log.items()] == [None, "slow_first"]


async def test_cut_midway_loses_the_utterance(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.CUT, after_chunks=1))
    result = await run_stt(make_stt(sim, http), spoken(TEXT))

    assert isinstance(result.error, APIStatusError | APIConnectionError)
    assert Kind.START_OF_SPEECH in result.kinds()
    assert result.finals == []


async def test_stall_midway_goes_unnoticed_by_the_plugin(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    """Keep-alives keep a stalled socket looking healthy: only a deadline can catch it."""
    sim.state.plan.once(Fault(FaultType.STALL, after_chunks=1))
    result = SttResult()
    stream = make_stt(sim, http).stream(conn_options=fast(0.5))
    reader = asyncio.create_task(consume(stream, result))
    for frame in frames_of(spoken(TEXT)):
        stream.push_frame(frame)
    # no end_input(): a caller on a live call keeps the stream open
    for frame in frames_of(silence(1.0, 16000)):
        stream.push_frame(frame)
    await asyncio.sleep(0)
    done, _ = await asyncio.wait({reader}, timeout=2.5)

    assert not done  # still "connected", no error, no transcript
    assert result.error is None
    assert Kind.START_OF_SPEECH in result.kinds()
    assert result.finals == []
    await stream.aclose()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)


async def test_malformed_frame_is_logged_and_skipped_by_the_plugin(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.once(Fault(FaultType.MALFORMED, after_chunks=1))
    result = await run_stt(make_stt(sim, http), spoken(TEXT))

    assert result.error is None
    assert overlap(words_of(result.finals[0]), words_of(TEXT)) >= 0.8
    assert [a.fault for a in sim.state.log.items()] == [None, "malformed"]


@pytest.mark.parametrize("kind", [FaultType.EMPTY, FaultType.SILENT])
async def test_empty_result_gives_speech_but_no_transcript(
    sim: DeepgramSimulator, http: aiohttp.ClientSession, kind: FaultType
) -> None:
    sim.state.plan.once(Fault(kind))
    result = await run_stt(make_stt(sim, http), spoken(TEXT))

    assert result.error is None
    assert result.finals == []
    assert Kind.START_OF_SPEECH in result.kinds() and Kind.END_OF_SPEECH in result.kinds()


async def test_quota_counts_audio_seconds_and_closes_with_1008(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.plan.quota_after(2.0)  # seconds; one call streams about 4.5 s
    engine = make_stt(sim, http)
    first_call = await run_stt(engine, spoken(TEXT))
    second_call = await run_stt(engine, spoken(SECOND))

    assert first_call.error is None
    assert overlap(words_of(first_call.finals[0]), words_of(TEXT)) >= 0.8
    # out of credit: Deepgram ends the open socket with a policy-violation close frame
    assert isinstance(second_call.error, APIStatusError)
    assert second_call.error.status_code == 1008
    assert second_call.finals == []
    assert [a.fault for a in sim.state.log.items()] == [None, None, None, "quota"]


async def test_prerecorded_faults_map_to_http_answers(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    frames = list(frames_of(spoken("call me back", lead_s=0.1, tail_s=0.1)))
    engine = make_stt(sim, http)
    sim.state.plan.once(Fault(FaultType.EMPTY))
    empty = await engine.recognize(frames, conn_options=fast(2.0))
    sim.state.plan.once(Fault(FaultType.MALFORMED))
    with pytest.raises(APIConnectionError):
        await engine.recognize(frames, conn_options=fast(2.0))
    sim.state.plan.once(Fault(FaultType.CUT))
    with pytest.raises(APIConnectionError):
        await engine.recognize(frames, conn_options=fast(2.0))

    assert empty.alternatives[0].text == ""
    assert [a.fault for a in sim.state.log.items()] == ["empty", "malformed", "cut"]


async def test_finalize_flushes_an_unfinished_utterance(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    result = SttResult()
    stream = make_stt(sim, http).stream(conn_options=fast(2.0))
    reader = asyncio.create_task(consume(stream, result))
    for frame in frames_of(spoken(TEXT, tail_s=0.1)):  # too little silence to end it
        stream.push_frame(frame)
    stream.flush()  # the plugin sends Finalize
    loop = asyncio.get_running_loop()
    until = loop.time() + 15
    while not result.finals and not reader.done() and loop.time() < until:
        await asyncio.wait({reader}, timeout=0.05)
    await stream.aclose()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)

    assert result.error is None
    assert len(result.finals) == 1
    assert overlap(words_of(result.finals[0]), words_of(TEXT)) >= 0.8


async def test_raw_protocol_keepalive_closestream_metadata(
    sim: DeepgramSimulator, http: aiohttp.ClientSession
) -> None:
    url = sim.base_url.replace("http", "ws", 1) + "?encoding=linear16&sample_rate=16000&channels=1"
    messages: list[dict[str, object]] = []
    async with http.ws_connect(url, headers={"Authorization": "Token sim-key"}) as ws:
        await ws.send_str('{"type": "KeepAlive"}')
        await ws.send_bytes(spoken("call me back", tail_s=0.1).tobytes())
        await ws.send_str('{"type": "CloseStream"}')
        async for msg in ws:
            messages.append(msg.json())
        assert ws.close_code == 1000

    kinds = [m["type"] for m in messages]
    assert kinds[-1] == "Metadata"
    final = [m for m in messages if m["type"] == "Results" and m["is_final"]]
    assert len(final) == 1 and final[0]["from_finalize"] is True


async def test_idle_socket_is_closed_with_net_0001(http: aiohttp.ClientSession) -> None:
    async with DeepgramSimulator(idle_timeout_s=0.3) as sim:
        url = sim.base_url.replace("http", "ws", 1) + "?encoding=linear16&sample_rate=16000"
        async with http.ws_connect(url, headers={"Authorization": "Token sim-key"}) as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1011
            assert str(msg.extra).startswith("NET-0001")
