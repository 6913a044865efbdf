"""The Gemini simulator driven by the real LiveKit Google LLM plugin (google-genai underneath).

The plugin reaches the simulator through ``http_options=HttpOptions(base_url=...)``. Tests pass
``retry_options=HttpRetryOptions(attempts=1)``: without it google-genai silently retries a
dropped connection once after sleeping 1-10 s (measured: a RESET cost 4.4 s, then the retry
succeeded), which would hide the fault and slow every test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    llm,
)
from livekit.plugins import google

from plugins.local.faq_responder import FaqResponder
from plugins.sim.faults import Fault, FaultType
from plugins.sim.gemini_sim import GeminiSimulator

KEY = "sim-key"
MODEL = "gemini-2.0-flash"
FAST = APIConnectOptions(max_retry=0, timeout=2.0)
SHORT = APIConnectOptions(max_retry=0, timeout=0.4)


@pytest.fixture
async def sim() -> AsyncIterator[GeminiSimulator]:
    async with GeminiSimulator() as s:
        yield s


def _llm(sim: GeminiSimulator, key: str = KEY) -> google.LLM:
    return google.LLM(
        model=MODEL,
        api_key=key,
        http_options=types.HttpOptions(
            base_url=sim.base_url, retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )


SYSTEM = "You are a sales agent."
USER = "Hi, how much does it cost?"
SCRIPTED = FaqResponder().reply([("system", SYSTEM), ("user", USER)])


def _ctx() -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content=SYSTEM)
    ctx.add_message(role="user", content=USER)
    return ctx


async def _chat(model: google.LLM, conn: APIConnectOptions = FAST) -> list[llm.ChatChunk]:
    try:
        async with model.chat(chat_ctx=_ctx(), conn_options=conn) as stream:
            return [chunk async for chunk in stream]
    finally:
        await model.aclose()


def _text(chunks: list[llm.ChatChunk]) -> str:
    return "".join(c.delta.content or "" for c in chunks if c.delta)


def _route(sim: GeminiSimulator) -> str:
    return f"POST /v1/models/{MODEL}:streamGenerateContent"


# -- happy paths ---------------------------------------------------------------------------
async def test_stream_answers_with_the_default_responder(sim: GeminiSimulator) -> None:
    chunks = await _chat(_llm(sim))
    text = _text(chunks)
    assert text == SCRIPTED  # exactly what the default responder says to this history
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens > 0 and usage[-1].prompt_tokens > 0
    body = sim.last_request
    assert body is not None
    assert body["systemInstruction"]["parts"] == [{"text": SYSTEM}]
    assert sim.state.log.count(_route(sim)) == 1


async def test_scripted_text_and_function_call(sim: GeminiSimulator) -> None:
    sim.script_replies(["Scripted by the test."])
    sim.script_tool_call("book_call", {"when": "tomorrow"})
    assert _text(await _chat(_llm(sim))) == "Scripted by the test."
    calls = [tc for c in await _chat(_llm(sim)) if c.delta for tc in c.delta.tool_calls]
    assert [(c.name, c.arguments) for c in calls] == [("book_call", '{"when": "tomorrow"}')]


async def test_generate_content_and_models_without_streaming(sim: GeminiSimulator) -> None:
    sim.script_replies(["One whole answer."])
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=sim.base_url))
    done = await client.aio.models.generate_content(model=MODEL, contents="hello")
    assert done.text == "One whole answer."
    assert done.candidates and done.candidates[0].finish_reason == types.FinishReason.STOP
    names = [m.name async for m in await client.aio.models.list()]
    assert f"models/{MODEL}" in names


# -- auth and status faults ----------------------------------------------------------------
async def test_invalid_key_is_400_api_key_invalid(sim: GeminiSimulator) -> None:
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim, key="bad-key"))
    assert err.value.status_code == 400
    assert "API key not valid" in str(err.value.body)
    cause = err.value.__cause__
    assert isinstance(cause, genai_errors.ClientError)
    assert cause.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


async def test_missing_key_is_403_permission_denied(sim: GeminiSimulator) -> None:
    url = f"{sim.base_url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    async with aiohttp.ClientSession() as http, http.post(url, json={}) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["status"] == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("status", "name"), [(401, "UNAUTHENTICATED"), (500, "INTERNAL"), (503, "UNAVAILABLE")]
)
async def test_status_faults_carry_googles_status(
    sim: GeminiSimulator, status: int, name: str
) -> None:
    sim.state.plan.once(Fault(FaultType.STATUS, status=status))
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim))
    assert err.value.status_code == status
    assert str(err.value.body).endswith(name)
    assert _text(await _chat(_llm(sim))) == SCRIPTED  # one-shot


async def test_502_is_googles_html_page(sim: GeminiSimulator) -> None:
    sim.state.plan.once(Fault(FaultType.STATUS, status=502))
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim))
    assert err.value.status_code == 502
    cause = err.value.__cause__
    assert isinstance(cause, genai_errors.ServerError)


async def test_rate_limit_retry_delay_is_in_the_body_details(sim: GeminiSimulator) -> None:
    """Gemini sends no Retry-After header: the delay is a RetryInfo detail in the body."""
    sim.state.plan.once(Fault(FaultType.STATUS, status=429, retry_after_s=17))
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim))
    assert err.value.status_code == 429 and str(err.value.body).endswith("RESOURCE_EXHAUSTED")
    assert err.value.retryable
    cause = err.value.__cause__
    assert isinstance(cause, genai_errors.ClientError)
    details = cause.details["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"} in details


async def test_quota_counter_then_resource_exhausted(sim: GeminiSimulator) -> None:
    sim.state.plan.quota_after(10)
    assert _text(await _chat(_llm(sim)))
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim))
    assert err.value.status_code == 429
    assert "exceeded your current quota" in str(err.value.body)
    cause = err.value.__cause__
    assert isinstance(cause, genai_errors.ClientError)
    kinds = [d["@type"].rsplit(".", 1)[-1] for d in cause.details["error"]["details"]]
    assert "QuotaFailure" in kinds
    assert [a.fault for a in sim.state.log.items()] == [None, "quota"]


# -- connection and stream faults ------------------------------------------------------------
async def test_reset_is_a_connection_error(sim: GeminiSimulator) -> None:
    sim.state.plan.once(Fault(FaultType.RESET))
    with pytest.raises(APIConnectionError) as err:
        await _chat(_llm(sim))
    assert not isinstance(err.value, APITimeoutError)
    assert sim.state.log.count(_route(sim)) == 1  # no hidden SDK retry with attempts=1


async def test_hang_fails_at_the_plugin_timeout_and_closes_fast() -> None:
    sim = await GeminiSimulator().start()
    sim.state.plan.always(Fault(FaultType.HANG))
    with pytest.raises(APIConnectionError):
        await _chat(_llm(sim), SHORT)
    await sim.aclose()  # must not wait for the parked handler
    assert sim.state.log.items()[0].fault == "hang"


async def test_slow_first_chunk(sim: GeminiSimulator) -> None:
    sim.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=0.8))
    with pytest.raises(APIConnectionError):
        await _chat(_llm(sim), SHORT)
    sim.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=0.2))
    assert _text(await _chat(_llm(sim))) == SCRIPTED


async def test_cut_midway_delivers_the_first_chunks_then_fails(sim: GeminiSimulator) -> None:
    sim.script_replies(["one two three four five six seven eight nine"])
    sim.state.plan.once(Fault(FaultType.CUT, after_chunks=1))
    received: list[str] = []
    model = _llm(sim)
    with pytest.raises(APIConnectionError):
        async with model.chat(chat_ctx=_ctx(), conn_options=FAST) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    received.append(chunk.delta.content)
    await model.aclose()
    assert "".join(received) == "one two three four"


async def test_stall_midway_fails_at_the_timeout(sim: GeminiSimulator) -> None:
    sim.script_replies(["one two three four five six seven eight nine"])
    sim.state.plan.once(Fault(FaultType.STALL, after_chunks=1))
    with pytest.raises(APIConnectionError):
        await _chat(_llm(sim), SHORT)


async def test_malformed_chunk(sim: GeminiSimulator) -> None:
    sim.state.plan.once(Fault(FaultType.MALFORMED, after_chunks=1))
    with pytest.raises(APIConnectionError) as err:
        await _chat(_llm(sim))
    assert isinstance(err.value.__cause__, genai_errors.UnknownApiResponseError)


async def test_error_object_inside_the_stream(sim: GeminiSimulator) -> None:
    sim.state.plan.once(Fault(FaultType.IN_BAND_ERROR, status=503, after_chunks=1))
    with pytest.raises(APIStatusError) as err:
        await _chat(_llm(sim))
    assert err.value.status_code == 503
    assert isinstance(err.value.__cause__, genai_errors.ServerError)


async def test_empty_reply_is_no_response_generated(sim: GeminiSimulator) -> None:
    sim.state.plan.once(Fault(FaultType.EMPTY))
    with pytest.raises(APIStatusError, match="no response generated"):
        await _chat(_llm(sim))
