"""The OpenAI-compatible simulator driven by the real LiveKit OpenAI plugin (LLM, TTS, STT).

Every test talks over a real socket to the simulator and asserts what the plugin itself
returns or raises, so a simulator that drifts from the wire protocol the plugin speaks fails
here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
import numpy as np
import openai as openai_sdk
import pytest
from livekit import rtc
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
    llm,
)
from livekit.plugins import openai

from plugins.local.faq_responder import FaqResponder
from plugins.sim.faults import Fault, FaultPlan, FaultType, SimState
from plugins.sim.openai_sim import OpenAISimulator

KEY = "sim-key"
FAST = APIConnectOptions(max_retry=0, timeout=2.0)
SHORT = APIConnectOptions(max_retry=0, timeout=0.4)
SPOKEN = "Hello there, this is a test of the speech system."


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator() as s:
        yield s


@pytest.fixture
async def router() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(flavor="openrouter") as s:
        yield s


SYSTEM = "You are a sales agent."
USER = "Hi, how much does it cost?"
SCRIPTED = FaqResponder().reply([("system", SYSTEM), ("user", USER)])


def _ctx(text: str = USER) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content=SYSTEM)
    ctx.add_message(role="user", content=text)
    return ctx


async def _chat(
    model: llm.LLM,
    conn: APIConnectOptions = FAST,
    tools: list[llm.Tool] | None = None,
) -> list[llm.ChatChunk]:
    try:
        async with model.chat(chat_ctx=_ctx(), tools=tools, conn_options=conn) as stream:
            return [chunk async for chunk in stream]
    finally:
        await model.aclose()


def _text(chunks: list[llm.ChatChunk]) -> str:
    return "".join(c.delta.content or "" for c in chunks if c.delta)


def _llm(sim: OpenAISimulator, key: str = KEY) -> openai.LLM:
    return openai.LLM(model="gpt-4o-mini", base_url=sim.base_url, api_key=key)


# -- chat: happy paths ---------------------------------------------------------------------
async def test_chat_streams_the_default_responder_with_usage(sim: OpenAISimulator) -> None:
    chunks = await _chat(_llm(sim))
    text = _text(chunks)
    assert text == SCRIPTED  # exactly what the default responder says to this history
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].completion_tokens > 0 and usage[0].prompt_tokens > 0
    body = sim.last_chat_request
    assert body is not None and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert sim.state.log.count("POST /v1/chat/completions") == 1


async def test_scripted_replies_and_tool_calls_reach_the_plugin(sim: OpenAISimulator) -> None:
    sim.script_replies(["First scripted answer."])
    sim.script_tool_call("book_call", {"when": "tomorrow 9am", "phone": "+15551234567"})
    assert _text(await _chat(_llm(sim))) == "First scripted answer."

    calls = [tc for c in await _chat(_llm(sim)) if c.delta for tc in c.delta.tool_calls]
    assert [(c.name, c.arguments) for c in calls] == [
        ("book_call", '{"when":"tomorrow 9am","phone":"+15551234567"}')
    ]
    assert calls[0].call_id.startswith("call_")
    # the queue is used up: the default responder answers again
    assert _text(await _chat(_llm(sim))) == SCRIPTED


async def test_openrouter_flavor_serves_with_openrouter_plugin(router: OpenAISimulator) -> None:
    assert router.base_url.endswith("/api/v1")
    router.script_replies(["Routed answer."])
    model = openai.LLM.with_openrouter(
        base_url=router.base_url, api_key=KEY, app_name="never-silent", site_url="https://x.test"
    )
    assert _text(await _chat(model)) == "Routed answer."  # ": OPENROUTER PROCESSING" is skipped


async def test_models_list_and_non_streaming_completion(sim: OpenAISimulator) -> None:
    sim.script_replies(["Whole answer."])
    async with openai_sdk.AsyncOpenAI(base_url=sim.base_url, api_key=KEY) as client:
        models = await client.models.list()
        assert "gpt-4o-mini" in [m.id for m in models.data]
        done = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert done.choices[0].message.content == "Whole answer."
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.total_tokens > 0


# -- chat: auth and status faults ----------------------------------------------------------
async def test_rejected_key_gets_openais_401(sim: OpenAISimulator) -> None:
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim, key="bad-key"))
    assert err.value.status_code == 401
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "invalid_api_key"
    assert "bad-key" not in err.value.message  # the key is masked, as OpenAI does
    assert sim.state.log.items()[0].detail == "refused 401"


async def test_missing_key_gets_401_body() -> None:
    for flavor, path in (("openai", "/v1"), ("openrouter", "/api/v1")):
        async with (
            OpenAISimulator(flavor=flavor) as s,  # type: ignore[arg-type]
            aiohttp.ClientSession() as http,
            http.post(f"{s.origin}{path}/chat/completions", json={}) as resp,
        ):
            assert resp.status == 401
            body = await resp.json()
        assert "API key" in body["error"]["message"] or "auth" in body["error"]["message"]


@pytest.mark.parametrize("status", [403, 500, 503])
async def test_status_faults_reach_the_plugin(sim: OpenAISimulator, status: int) -> None:
    sim.state.plan.once(Fault(FaultType.STATUS, status=status))
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim))
    assert err.value.status_code == status
    assert isinstance(err.value.body, dict) and err.value.body["message"]
    # one-shot: the next request succeeds
    assert _text(await _chat(_llm(sim))) == SCRIPTED


async def test_502_is_cloudflares_html_page(sim: OpenAISimulator) -> None:
    sim.state.plan.once(Fault(FaultType.STATUS, status=502))
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim))
    assert err.value.status_code == 502
    assert "502 Bad Gateway" in str(err.value.body)


async def test_quota_is_429_insufficient_quota_on_openai(sim: OpenAISimulator) -> None:
    sim.state.plan.once(Fault(FaultType.QUOTA))
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim))
    assert err.value.status_code == 429
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "insufficient_quota"


async def test_quota_is_402_on_openrouter(router: OpenAISimulator) -> None:
    router.state.plan.once(Fault(FaultType.QUOTA))
    with pytest.raises(APIStatusError) as err:
        await _chat(openai.LLM.with_openrouter(base_url=router.base_url, api_key=KEY))
    assert err.value.status_code == 402
    assert isinstance(err.value.body, dict) and "credits" in err.value.body["message"]


async def test_quota_counter_refuses_once_tokens_are_used(sim: OpenAISimulator) -> None:
    sim.state.plan.quota_after(10)  # the first reply alone is well over 10 tokens
    assert _text(await _chat(_llm(sim)))
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim))
    assert err.value.status_code == 429
    assert [a.fault for a in sim.state.log.items()] == [None, "quota"]


async def test_rate_limit_with_and_without_retry_after(sim: OpenAISimulator) -> None:
    """The plugin drops response headers from its exception; an httpx hook still sees them."""
    seen: list[httpx.Headers] = []

    async def keep(response: httpx.Response) -> None:
        seen.append(response.headers)

    client = openai_sdk.AsyncClient(
        base_url=sim.base_url,
        api_key=KEY,
        max_retries=0,
        http_client=httpx.AsyncClient(event_hooks={"response": [keep]}),
    )
    sim.state.plan.once(Fault(FaultType.STATUS, status=429, retry_after_s=7))
    sim.state.plan.once(Fault(FaultType.STATUS, status=429))
    for _ in range(2):
        with pytest.raises(APIStatusError) as err:
            await _chat(openai.LLM(model="gpt-4o-mini", client=client))
        assert err.value.status_code == 429
        assert isinstance(err.value.body, dict)
        assert err.value.body["code"] == "rate_limit_exceeded"
    await client.close()
    assert seen[0]["retry-after"] == "7" and seen[0]["retry-after-ms"] == "7000"
    assert "retry-after" not in seen[1]
    assert seen[1]["x-ratelimit-remaining-requests"] == "0"


@pytest.mark.parametrize(
    ("status", "needle"),
    [(401, "User not found."), (403, "flagged"), (429, "Rate limit"), (503, "No endpoints")],
)
async def test_openrouter_error_bodies(router: OpenAISimulator, status: int, needle: str) -> None:
    if status != 401:
        router.state.plan.once(Fault(FaultType.STATUS, status=status))
    model = openai.LLM.with_openrouter(
        base_url=router.base_url, api_key="bad-key" if status == 401 else KEY
    )
    with pytest.raises(APIStatusError) as err:
        await _chat(model)
    assert err.value.status_code == status
    body = err.value.body
    assert isinstance(body, dict) and needle in body["message"] and body["code"] == status
    if status in (429, 403):
        assert "metadata" in body


async def test_flapping_follows_the_plan_clock() -> None:
    now = [0.0]
    async with OpenAISimulator(SimState(plan=FaultPlan(clock=lambda: now[0]))) as sim:
        sim.state.plan.flapping(Fault(FaultType.STATUS, status=503), down_s=10, up_s=5)
        outcomes: list[int | str] = []
        for t in (1.0, 11.0, 16.0):
            now[0] = t
            try:
                outcomes.append(_text(await _chat(_llm(sim))) == SCRIPTED and "ok")
            except APIStatusError as e:
                outcomes.append(e.status_code)
    assert outcomes == [503, "ok", 503]


# -- chat: connection and stream faults ------------------------------------------------------
async def test_reset_before_any_byte_is_a_connection_error(sim: OpenAISimulator) -> None:
    sim.state.plan.once(Fault(FaultType.RESET))
    with pytest.raises(APIConnectionError) as err:
        await _chat(_llm(sim))
    assert not isinstance(err.value, APITimeoutError)


async def test_hang_times_out_and_shutdown_releases_it() -> None:
    sim = await OpenAISimulator().start()
    sim.state.plan.always(Fault(FaultType.HANG))
    with pytest.raises(APITimeoutError):
        await _chat(_llm(sim), SHORT)
    # the handler is still parked; closing must not wait for it (runner shutdown would hang)
    await asyncio.wait_for(sim.aclose(), timeout=3)
    assert sim.state.log.items()[0].fault == "hang"


async def test_slow_first_token_beats_or_misses_the_deadline(sim: OpenAISimulator) -> None:
    sim.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=0.8))
    with pytest.raises(APITimeoutError):
        await _chat(_llm(sim), SHORT)
    sim.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=0.2))
    assert _text(await _chat(_llm(sim), FAST)) == SCRIPTED


async def test_cut_midway_keeps_the_sent_chunks_then_fails(sim: OpenAISimulator) -> None:
    sim.script_replies(["one two three four five six"])
    sim.state.plan.once(Fault(FaultType.CUT, after_chunks=3))
    received: list[str] = []
    model = _llm(sim)
    with pytest.raises(APIConnectionError):
        async with model.chat(chat_ctx=_ctx(), conn_options=FAST) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    received.append(chunk.delta.content)
    await model.aclose()
    assert "".join(received) == "one two three"


async def test_stall_midway_times_out(sim: OpenAISimulator) -> None:
    sim.script_replies(["one two three four"])
    sim.state.plan.once(Fault(FaultType.STALL, after_chunks=2))
    with pytest.raises(APITimeoutError):
        await _chat(_llm(sim), SHORT)


async def test_malformed_chunk_is_a_connection_error(sim: OpenAISimulator) -> None:
    sim.state.plan.once(Fault(FaultType.MALFORMED, after_chunks=1))
    with pytest.raises(APIConnectionError) as err:
        await _chat(_llm(sim))
    assert not isinstance(err.value, APITimeoutError)


async def test_openai_in_band_error_fails_the_stream(sim: OpenAISimulator) -> None:
    sim.state.plan.once(Fault(FaultType.IN_BAND_ERROR, after_chunks=2, message="boom midway"))
    with pytest.raises(APIConnectionError) as err:
        await _chat(_llm(sim))
    assert isinstance(err.value.__cause__, openai_sdk.APIError)
    assert "boom midway" in str(err.value.__cause__)


async def test_openrouter_error_object_inside_a_200_stream(router: OpenAISimulator) -> None:
    router.state.plan.once(Fault(FaultType.IN_BAND_ERROR, after_chunks=1))
    with pytest.raises(APIConnectionError) as err:
        await _chat(openai.LLM.with_openrouter(base_url=router.base_url, api_key=KEY))
    cause = err.value.__cause__
    assert isinstance(cause, openai_sdk.APIError)
    assert "Provider disconnected" in str(cause)


async def test_empty_reply_is_well_formed_but_has_no_text(sim: OpenAISimulator) -> None:
    sim.state.plan.once(Fault(FaultType.EMPTY))
    chunks = await _chat(_llm(sim))
    assert _text(chunks) == ""
    assert [c.usage.completion_tokens for c in chunks if c.usage] == [0]


# -- speech --------------------------------------------------------------------------------
async def _speak(sim: OpenAISimulator, **kwargs: object) -> list[rtc.AudioFrame]:
    tts = openai.TTS(base_url=sim.base_url, api_key=KEY, **kwargs)  # type: ignore[arg-type]
    try:
        return [ev.frame async for ev in tts.synthesize(SPOKEN, conn_options=FAST)]
    finally:
        await tts.aclose()


async def _hear(sim: OpenAISimulator, frames: list[rtc.AudioFrame]) -> str:
    stt = openai.STT(base_url=sim.base_url, api_key=KEY)
    try:
        event = await stt.recognize(frames, conn_options=FAST)
    finally:
        await stt.aclose()
    return event.alternatives[0].text


async def test_speech_round_trip_default_mp3_sse(sim: OpenAISimulator) -> None:
    frames = await _speak(sim)  # gpt-4o-mini-tts asks for mp3 over SSE
    assert sum(f.samples_per_channel for f in frames) / 24000 > 1.0
    heard = await _hear(sim, frames)
    assert {"hello", "there", "speech", "system"} <= set(heard.split())
    routes = [a.route for a in sim.state.log.items()]
    assert routes == ["POST /v1/audio/speech", "POST /v1/audio/transcriptions"]
    assert "mp3 sse" in sim.state.log.items()[0].detail


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
async def test_speech_raw_formats(sim: OpenAISimulator, fmt: str) -> None:
    frames = await _speak(sim, model="tts-1", response_format=fmt)
    pcm = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    assert pcm.size > 24000 and np.abs(pcm).max() > 1000
    assert sim.state.log.items()[0].detail.endswith(fmt)


async def test_speech_faults(sim: OpenAISimulator) -> None:
    sim.state.plan.quota_after(len(SPOKEN))
    assert await _speak(sim)
    with pytest.raises(APIStatusError) as err:
        await _speak(sim)
    assert err.value.status_code == 429
    sim.state.plan.clear()

    sim.state.plan.once(Fault(FaultType.SILENT))
    frames = await _speak(sim, model="tts-1", response_format="pcm")
    assert sum(f.samples_per_channel for f in frames) > 24000
    assert all(not np.frombuffer(f.data, dtype=np.int16).any() for f in frames)

    sim.state.plan.once(Fault(FaultType.EMPTY))
    with pytest.raises(APIError, match="no audio frames"):
        await _speak(sim)

    sim.state.plan.once(Fault(FaultType.MALFORMED, after_chunks=1))
    with pytest.raises(APIConnectionError):
        await _speak(sim)

    sim.state.plan.once(Fault(FaultType.CUT, after_chunks=1))
    with pytest.raises(APIConnectionError):
        await _speak(sim, model="tts-1", response_format="pcm")


# -- transcription ---------------------------------------------------------------------------
async def test_transcription_faults(sim: OpenAISimulator) -> None:
    frames = await _speak(sim, model="tts-1", response_format="pcm")
    sim.state.log.clear()

    sim.state.plan.once(Fault(FaultType.STATUS, status=500))
    with pytest.raises(APIStatusError) as err:
        await _hear(sim, frames)
    assert err.value.status_code == 500

    sim.state.plan.once(Fault(FaultType.EMPTY))
    assert await _hear(sim, frames) == ""

    sim.state.plan.once(Fault(FaultType.MALFORMED))
    with pytest.raises(APIConnectionError):
        await _hear(sim, frames)

    sim.state.plan.quota_after(0.5)  # audio seconds
    assert "speech" in (await _hear(sim, frames)).split()
    with pytest.raises(APIStatusError) as err:
        await _hear(sim, frames)
    assert err.value.status_code == 429
    assert [a.fault for a in sim.state.log.items()] == [
        "status",
        "empty",
        "malformed",
        None,
        "quota",
    ]
