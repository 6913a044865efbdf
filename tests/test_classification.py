"""Every failure shape the plugins produce maps to the right FailureKind, with no secret in it."""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
import openai
import pytest
from aiohttp import http_exceptions, web
from google.genai import errors as genai_errors
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError
from multidict import CIMultiDict, CIMultiDictProxy

from plugins.catalog import CATALOG
from plugins.resilience.classify import classify
from plugins.resilience.deadlines import AdaptiveDeadline, DeadlineSettings
from plugins.resilience.failures import (
    ClassifiedError,
    DeadlineExceededError,
    EmptyResultError,
    TruncatedError,
)
from plugins.resilience.phrases import Vocabulary, vocabulary
from plugins.resilience.response_tap import ResponseTap, TappedResponse
from plugins.resilience.retry_after import retry_after_from_headers
from plugins.resilience.scrub import scrub
from plugins.resilience.types import Failure, FailureKind

K = FailureKind


def _wrapped(outer: BaseException, inner: BaseException) -> BaseException:
    """``raise outer from None`` inside ``except inner``: what the plugins do."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer from None
    except BaseException as e:
        return e


def _aiohttp_error(status: int, message: str, headers: dict[str, str] | None = None) -> Exception:
    info = aiohttp.RequestInfo(
        url=aiohttp.client.URL("http://127.0.0.1/x"),
        method="GET",
        headers=CIMultiDictProxy(CIMultiDict()),
        real_url=aiohttp.client.URL("http://127.0.0.1/x"),
    )
    return aiohttp.ClientResponseError(
        info,
        (),
        status=status,
        message=message,
        headers=CIMultiDictProxy(CIMultiDict(headers or {})),
    )


def _openai_error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Exception:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, json=body, request=request)
    cls = {429: openai.RateLimitError, 401: openai.AuthenticationError, 400: openai.BadRequestError}
    err_cls = cls.get(
        status, openai.InternalServerError if status >= 500 else openai.APIStatusError
    )
    return err_cls(body["error"]["message"], response=response, body=body["error"])


def _lk_from_openai(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> BaseException:
    """What livekit-plugins-openai raises for an OpenAI status error."""
    inner = _openai_error(status, body, headers)
    assert isinstance(inner, openai.APIStatusError)
    outer = APIStatusError(inner.message, status_code=status, body=inner.body)
    return _wrapped(outer, inner)


def _gemini(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> BaseException:
    payload = {
        "error": {"code": code, "status": status, "message": message, "details": details or []}
    }
    inner_cls = genai_errors.ClientError if code < 500 else genai_errors.ServerError
    inner = inner_cls(code, payload)
    outer = APIStatusError(
        "gemini llm: client error", status_code=code, body=f"{inner.message} {inner.status}"
    )
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


def _cut_body() -> BaseException:
    """What the aiohttp plugins raise when a 200 body ends before its declared length."""
    try:
        try:
            try:
                raise http_exceptions.TransferEncodingError(
                    "Not enough data to satisfy transfer length header."
                )
            except http_exceptions.TransferEncodingError as e:
                raise aiohttp.ClientPayloadError(f"Response payload is not completed: {e!r}") from e
        except aiohttp.ClientPayloadError as e:
            raise APIConnectionError() from e
    except BaseException as e:
        return e


def _elevenlabs_ws_close() -> BaseException:
    """The elevenlabs plugin on a close frame: the code survives, the reason does not."""
    return APIStatusError("ElevenLabs websocket connection closed unexpectedly", status_code=1008)


def _elevenlabs_http_401() -> BaseException:
    """The elevenlabs plugin on a 401 from /stream: reason phrase only, body dropped."""
    return _wrapped(
        APIStatusError("Unauthorized", status_code=401, body=None),
        _aiohttp_error(401, "Unauthorized"),
    )


CASES: list[tuple[str, BaseException, FailureKind, float | None]] = [
    (
        "openai insufficient_quota (429)",
        _lk_from_openai(
            429,
            {
                "error": {
                    "message": "You exceeded your current quota",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            },
        ),
        K.QUOTA_EXHAUSTED,
        None,
    ),
    (
        "openai 429 rate limit with retry-after",
        _lk_from_openai(
            429,
            {
                "error": {
                    "message": "Rate limit reached for requests",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
            {"retry-after": "7"},
        ),
        K.RATE_LIMITED,
        7.0,
    ),
    (
        "openai 429 with x-ratelimit-reset-requests",
        _lk_from_openai(
            429,
            {"error": {"message": "Rate limit reached", "type": "requests", "code": None}},
            {"x-ratelimit-reset-requests": "1m30s", "x-ratelimit-reset-tokens": "20ms"},
        ),
        K.RATE_LIMITED,
        90.0,
    ),
    (
        "openai 401 invalid key",
        _lk_from_openai(
            401,
            {
                "error": {
                    "message": "Incorrect API key provided",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        ),
        K.KEY_REJECTED,
        None,
    ),
    (
        "openai 400 context_length_exceeded",
        _lk_from_openai(
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 8192 tokens",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            },
        ),
        K.REQUEST_FAULT,
        None,
    ),
    (
        "openai 400 content filter",
        _lk_from_openai(
            400,
            {
                "error": {
                    "message": "flagged by content_filter",
                    "type": "invalid_request_error",
                    "code": "content_filter",
                }
            },
        ),
        K.REQUEST_FAULT,
        None,
    ),
    (
        "openai 503",
        _lk_from_openai(
            503,
            {
                "error": {
                    "message": "The server is overloaded",
                    "type": "server_error",
                    "code": None,
                }
            },
        ),
        K.SERVER_ERROR,
        None,
    ),
    (
        "gemini RESOURCE_EXHAUSTED per-minute with RetryInfo",
        _gemini(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"},
            ],
        ),
        K.RATE_LIMITED,
        27.0,
    ),
    (
        "gemini RESOURCE_EXHAUSTED per-day quota",
        _gemini(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}
                    ],
                }
            ],
        ),
        K.QUOTA_EXHAUSTED,
        None,
    ),
    (
        "gemini 403 PERMISSION_DENIED",
        _gemini(403, "PERMISSION_DENIED", "API key not valid."),
        K.KEY_REJECTED,
        None,
    ),
    (
        "gemini 500",
        _gemini(500, "INTERNAL", "An internal error has occurred."),
        K.SERVER_ERROR,
        None,
    ),
    (
        "gemini blocked",
        APIStatusError("generation blocked by gemini: SAFETY", retryable=False),
        K.REQUEST_FAULT,
        None,
    ),
    (
        "gemini no response",
        APIStatusError("no response generated", body="finish reason: STOP"),
        K.EMPTY_RESULT,
        None,
    ),
    (
        "elevenlabs 401 quota_exceeded (http)",
        _wrapped(
            APIStatusError(
                "quota_exceeded",
                status_code=401,
                body={
                    "detail": {
                        "status": "quota_exceeded",
                        "message": "This request exceeds your quota.",
                    }
                },
            ),
            _aiohttp_error(401, "Unauthorized"),
        ),
        K.QUOTA_EXHAUSTED,
        None,
    ),
    ("elevenlabs quota error frame", APIError(message="quota_exceeded"), K.QUOTA_EXHAUSTED, None),
    (
        "elevenlabs 401 invalid key",
        APIStatusError(
            "Unauthorized", status_code=401, body={"detail": {"status": "invalid_api_key"}}
        ),
        K.KEY_REJECTED,
        None,
    ),
    (
        "cartesia 402 credits (ws handshake)",
        _wrapped(
            APIStatusError("Payment Required", status_code=402, body=None),
            _aiohttp_error(402, "Payment Required"),
        ),
        K.QUOTA_EXHAUSTED,
        None,
    ),
    (
        "cartesia in-band credits error frame",
        APIError(
            "Cartesia returned error: {'type': 'error', 'error': 'insufficient credits', 'status_code': 402}"
        ),
        K.QUOTA_EXHAUSTED,
        None,
    ),
    (
        "cartesia in-band error frame",
        APIError(
            "Cartesia returned error: {'type': 'error', 'error': 'internal failure', 'status_code': 500}"
        ),
        K.IN_BAND_ERROR,
        None,
    ),
    (
        "cartesia 429 (handshake) with Retry-After kept in the context",
        _wrapped(
            APIStatusError("Too Many Requests", status_code=429, body=None),
            _aiohttp_error(429, "Too Many Requests", {"Retry-After": "3"}),
        ),
        K.RATE_LIMITED,
        3.0,
    ),
    (
        "deepgram ws close 1011",
        APIStatusError("deepgram connection closed unexpectedly", status_code=1011),
        K.SERVER_ERROR,
        None,
    ),
    (
        "ws closed without code",
        APIStatusError("Cartesia connection closed unexpectedly", status_code=-1),
        K.TRUNCATED,
        None,
    ),
    ("deepgram 502", APIStatusError("Bad Gateway", status_code=502), K.SERVER_ERROR, None),
    (
        "connection reset",
        _wrapped(APIConnectionError(), ConnectionResetError("reset by peer")),
        K.CONNECTION_ERROR,
        None,
    ),
    ("plugin timeout", APITimeoutError(), K.TIMEOUT, None),
    ("asyncio timeout", TimeoutError(), K.TIMEOUT, None),
    (
        "our first-token deadline",
        DeadlineExceededError("late", stalled=False, deadline_s=1.0),
        K.TIMEOUT,
        None,
    ),
    (
        "our stall deadline",
        DeadlineExceededError("quiet", stalled=True, deadline_s=2.0),
        K.STALL,
        None,
    ),
    ("empty", EmptyResultError("nothing"), K.EMPTY_RESULT, None),
    ("truncated", TruncatedError("cut"), K.TRUNCATED, None),
    ("no audio frames", APIError("no audio frames were pushed for text: hi"), K.EMPTY_RESULT, None),
    ("408", APIStatusError("Request Timeout", status_code=408), K.TIMEOUT, None),
    ("cartesia /tts/bytes body cut", _cut_body(), K.TRUNCATED, None),
    # reason lost (no tap): not a rejected key, not an hour of quota; the probe tells which
    ("elevenlabs 1008 close, reason unknown", _elevenlabs_ws_close(), K.IN_BAND_ERROR, None),
    ("unknown", RuntimeError("boom"), K.UNKNOWN, None),
]


#: The provider whose wording a case's error uses, by the case's first word.
_SPEAKER = {
    "openai": ("llm", "openai"),
    "openrouter": ("llm", "openrouter"),
    "gemini": ("llm", "google"),
    "elevenlabs": ("tts", "elevenlabs"),
    "cartesia": ("tts", "cartesia"),
    "deepgram": ("stt", "deepgram"),
}


def _words(case: str) -> Vocabulary:
    """The vocabulary the guard of the case's provider classifies with (generic otherwise)."""
    speaker = _SPEAKER.get(case.split()[0])
    if speaker is None:
        return vocabulary()
    return vocabulary(CATALOG.lookup(*speaker).errors)  # type: ignore[arg-type]


def test_provider_wording_comes_from_the_provider_definition() -> None:
    """ElevenLabs' 401 ``quota_exceeded`` is a quota only in ElevenLabs' words: the generic
    vocabulary reads a bare 401 as a rejected key, and another provider's words do not help."""
    exc = _elevenlabs_http_401()
    body = f'{{"detail": {{"status": "quota_exceeded", "message": "{ELEVEN_QUOTA}"}}}}'
    tapped = (401, {}, body)
    assert classify(exc, response=tapped, words=_words("elevenlabs")).kind is K.QUOTA_EXHAUSTED
    assert classify(exc, response=tapped, words=_words("cartesia")).kind is K.KEY_REJECTED
    assert classify(exc, response=tapped).kind is K.KEY_REJECTED


@pytest.mark.parametrize(("name", "exc", "kind", "retry_after"), CASES, ids=[c[0] for c in CASES])
def test_classification_table(
    name: str, exc: BaseException, kind: FailureKind, retry_after: float | None
) -> None:
    failure = classify(exc, words=_words(name))
    assert failure.kind is kind, f"{name}: {failure}"
    if retry_after is not None:
        assert failure.retry_after_s == pytest.approx(retry_after)


ELEVEN_QUOTA = (
    "This request exceeds your quota of 10000. You have 0 credits remaining, while 91 credits "
    "are required for this request."
)

TAPPED: list[tuple[str, BaseException, TappedResponse, FailureKind]] = [
    (
        "elevenlabs 1008 close, quota reason",
        _elevenlabs_ws_close(),
        (1008, {}, ELEVEN_QUOTA[:120]),  # a close reason is cut at 123 bytes
        K.QUOTA_EXHAUSTED,
    ),
    (
        "elevenlabs 1008 close, invalid key reason",
        _elevenlabs_ws_close(),
        (1008, {}, "Invalid API key"),
        K.KEY_REJECTED,
    ),
    (
        "elevenlabs 1008 close, server trouble",
        _elevenlabs_ws_close(),
        (1008, {}, "We are sorry, something went wrong. You are not charged for this request."),
        K.IN_BAND_ERROR,
    ),
    (
        "elevenlabs 401 quota_exceeded body (http probe)",
        _elevenlabs_http_401(),
        (401, {}, f'{{"detail": {{"status": "quota_exceeded", "message": "{ELEVEN_QUOTA}"}}}}'),
        K.QUOTA_EXHAUSTED,
    ),
    (
        "elevenlabs 401 invalid_api_key body (http probe)",
        _elevenlabs_http_401(),
        (401, {}, '{"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}'),
        K.KEY_REJECTED,
    ),
    (
        "another request's close code is not this error's",
        _elevenlabs_http_401(),
        (1008, {}, ELEVEN_QUOTA),
        K.KEY_REJECTED,
    ),
    (
        "a cut body ignores an error response the tap saw meanwhile",
        _cut_body(),
        (429, {"retry-after": "5"}, "Too Many Requests"),
        K.TRUNCATED,
    ),
]


@pytest.mark.parametrize(("name", "exc", "response", "kind"), TAPPED, ids=[c[0] for c in TAPPED])
def test_classification_with_what_the_tap_recovered(
    name: str, exc: BaseException, response: TappedResponse, kind: FailureKind
) -> None:
    failure = classify(exc, response=response, words=_words(name))
    assert failure.kind is kind, f"{name}: {failure}"


async def test_tap_keeps_the_close_reason_a_plugin_drops() -> None:
    async def close_with(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close(code=int(request.query["code"]), message=request.query["why"].encode())
        return ws

    app = web.Application()
    app.router.add_get("/ws", close_with)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    tap = ResponseTap()
    try:
        async with aiohttp.ClientSession(ws_response_class=tap.websocket_class()) as session:
            since = tap.now()
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws?code=1000&why=bye") as ws:
                assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
            assert tap.recent(since) is None  # a normal close is no error
            async with session.ws_connect(
                f"http://127.0.0.1:{port}/ws?code=1008&why=exceeds+your+quota"
            ) as ws:
                await ws.receive()
                assert ws.close_code == 1008
            assert tap.recent(since) == (1008, {}, "exceeds your quota")
    finally:
        await runner.cleanup()


def test_request_faults_do_not_count_against_health() -> None:
    assert not classify(CASES[4][1]).kind.counts_against_health
    assert classify(CASES[6][1]).kind.counts_against_health


def test_classified_error_passes_through_unchanged() -> None:
    failure = Failure(FailureKind.STALL, "quiet")
    assert classify(ClassifiedError("tts:x", failure)) is failure
    assert ClassifiedError("tts:x", Failure(FailureKind.KEY_REJECTED, "no")).retryable is False
    assert ClassifiedError("tts:x", Failure(FailureKind.SERVER_ERROR, "5xx")).retryable is True


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "12"}, 12.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),
        ({"x-ratelimit-reset": "1445412490"}, 10.0),
        ({"x-ratelimit-reset": "42"}, 42.0),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], expected: float | None) -> None:
    now = 1445412480.0  # 2015-10-21 07:28:00 UTC
    value = retry_after_from_headers(headers, now=now)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


def test_messages_are_scrubbed_of_keys() -> None:
    # A fake key in a real key's shape, assembled at run time so no key-like literal is
    # committed (secret scanners would rightly flag one).
    secret = "sk-" + "proj-" + "fakefakefake" * 3
    exc = _lk_from_openai(
        401,
        {
            "error": {
                "message": f"Incorrect API key provided: {secret}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        },
    )
    failure = classify(exc)
    assert secret not in failure.message
    assert "sk-proj" not in failure.message
    assert failure.kind is K.KEY_REJECTED
    # an arbitrary configured secret is removed verbatim too
    assert (
        "hunter2-very-secret"
        not in classify(
            APIError("bad token hunter2-very-secret"), secrets=["hunter2-very-secret"]
        ).message
    )
    assert "[redacted]" in scrub("Authorization: Bearer abcdefghijklmnop")
    assert "xyz" not in scrub("https://x/?api_key=xyz123456&b=1")


def test_adaptive_deadline_clamps_to_floor_and_ceiling() -> None:
    d = AdaptiveDeadline(DeadlineSettings(floor_s=0.3, ceiling_s=1.0, stall_s=2.0, min_samples=3))
    assert d.first_s == 1.0  # nothing measured yet: the ceiling
    for _ in range(10):
        d.observe(0.05)
    assert d.first_s == pytest.approx(0.3)  # 0.05*2+0.15 = 0.25 -> floor
    for _ in range(50):
        d.observe(0.2)
    assert d.first_s == pytest.approx(0.55)
    for _ in range(50):
        d.observe(3.0)
    assert d.first_s == 1.0
    with pytest.raises(ValueError, match="floor"):
        DeadlineSettings(floor_s=2.0, ceiling_s=1.0, stall_s=1.0)
