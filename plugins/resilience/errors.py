"""Turn any provider failure into a :class:`Failure` the breaker can act on.

LiveKit plugins wrap provider errors in ``APIStatusError`` / ``APIConnectionError`` and often
drop the headers and body on the way (``raise ... from None`` still keeps ``__context__``), so
the classifier walks the whole exception chain and reads what each layer kept: the LiveKit
error, the OpenAI SDK error (``.response.headers``, ``.body``), aiohttp's
``ClientResponseError`` (``.headers``), google-genai's ``APIError`` (``.code``, ``.details``)
and our own deadline/result errors. The order of the rules matters: quota wording wins over
the status code because OpenAI reports exhausted credit as 429 and ElevenLabs as 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import http_exceptions
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError

from plugins.resilience.types import Failure, FailureKind

# -- errors raised by the guards themselves ------------------------------------------------


class GuardError(APIError):
    """A failure the guard detected itself (deadline, empty or cut result, in-band error)."""

    kind: FailureKind = FailureKind.UNKNOWN

    def __init__(self, message: str, *, kind: FailureKind | None = None) -> None:
        super().__init__(message, retryable=True)
        if kind is not None:
            self.kind = kind


class DeadlineExceededError(GuardError):
    """First token/audio/result (TIMEOUT) or next chunk (STALL) did not arrive in time."""

    def __init__(self, message: str, *, stalled: bool, deadline_s: float) -> None:
        super().__init__(message, kind=FailureKind.STALL if stalled else FailureKind.TIMEOUT)
        self.deadline_s = deadline_s


class EmptyResultError(GuardError):
    kind = FailureKind.EMPTY_RESULT


class TruncatedError(GuardError):
    kind = FailureKind.TRUNCATED


class InBandError(GuardError):
    kind = FailureKind.IN_BAND_ERROR


class ProviderUnavailableError(APIError):
    """Raised before any network I/O when the health store refuses the attempt.

    Not retryable: the chain should move on to the next provider at once.
    """

    def __init__(self, key: str, reason: str, *, until: float | None = None) -> None:
        super().__init__(f"{key} skipped: {reason}", retryable=False)
        self.key = key
        self.until = until


class ClassifiedError(APIError):
    """What a guard re-raises: the original error, classified, with a scrubbed message.

    ``retryable`` says whether the same provider may answer soon (rate limits, 5xx, resets),
    so callers outside a chain can decide; inside a chain LiveKit's ``FallbackAdapter`` moves
    on to the next provider whatever it says.
    """

    def __init__(self, key: str, failure: Failure) -> None:
        super().__init__(
            f"{key}: {failure.kind.value}: {failure.message}",
            retryable=failure.kind in _RETRYABLE,
        )
        self.key = key
        self.failure = failure


_RETRYABLE = frozenset(
    {
        FailureKind.RATE_LIMITED,
        FailureKind.SERVER_ERROR,
        FailureKind.CONNECTION_ERROR,
        FailureKind.TIMEOUT,
        FailureKind.STALL,
        FailureKind.TRUNCATED,
        FailureKind.EMPTY_RESULT,
        FailureKind.IN_BAND_ERROR,
        FailureKind.UNKNOWN,
    }
)

# -- scrubbing -----------------------------------------------------------------------------

_SECRET_PATTERNS = [
    re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)(api[_-]?key|x-api-key|xi-api-key|key|token|secret|password|authorization)"
        r"(\"?\s*[:=]\s*\"?)[^\s\"'&,}]+"
    ),
    re.compile(r"\b(sk|pk|rk|sess|sk-or-v1|sk-proj)-[A-Za-z0-9_-]{6,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"),
    re.compile(r"\b[A-Fa-f0-9]{32,}\b"),
    re.compile(r"\b[A-Za-z0-9_-]{40,}\b"),
]

MAX_MESSAGE_CHARS = 300


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove anything key-like from ``text`` (and every given secret verbatim)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
        else:
            text = pattern.sub("[redacted]", text)
    text = " ".join(text.split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


# -- evidence gathered from an exception chain ---------------------------------------------


@dataclass
class _Evidence:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    guard_kind: FailureKind | None = None
    timeout: bool = False
    connection: bool = False
    ws_close: bool = False
    truncated: bool = False  # the response body ended before its declared length
    in_band: bool = False  # an error object the provider sent without an HTTP error status

    @property
    def text(self) -> str:
        return " ".join(self.texts)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 12:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        for nxt in (cur.__cause__, cur.__context__):
            if nxt is not None:
                todo.append(nxt)


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


def _headers(value: object) -> dict[str, str]:
    if isinstance(value, Mapping) or hasattr(value, "items"):
        try:
            return {str(k).lower(): str(v) for k, v in value.items()}  # type: ignore[union-attr]
        except Exception:
            return {}
    return {}


def _gather(exc: BaseException) -> _Evidence:
    ev = _Evidence()
    for e in _chain(exc):
        if isinstance(e, GuardError) and ev.guard_kind is None:
            ev.guard_kind = e.kind
        if isinstance(e, APITimeoutError | asyncio.TimeoutError | TimeoutError):
            ev.timeout = True
        if isinstance(e, APIStatusError):
            if ev.status is None and e.status_code not in (-1, None):
                ev.status = e.status_code
            ev.texts.append(e.message)
            ev.texts.append(_as_text(e.body))
            if "closed unexpectedly" in e.message or "connection closed" in e.message:
                ev.ws_close = True
        elif isinstance(e, APIConnectionError):
            ev.connection = True
            ev.texts.append(e.message)
        elif isinstance(e, APIError):
            ev.texts.append(e.message)
            ev.texts.append(_as_text(e.body))
        elif isinstance(e, aiohttp.ClientPayloadError):
            ev.truncated = True
        elif isinstance(e, http_exceptions.HttpProcessingError):
            # aiohttp's own parser rejecting what the server sent: its ``code`` (400) is the
            # answer a server would give such a message, not a status the provider returned
            if isinstance(e, http_exceptions.PayloadEncodingError):
                ev.truncated = True
            else:
                ev.connection = True
            ev.texts.append(e.message)
        elif isinstance(e, aiohttp.ClientResponseError):
            if ev.status is None:
                ev.status = e.status
            ev.headers.update(_headers(e.headers))
            ev.texts.append(e.message)
        elif isinstance(e, aiohttp.ClientConnectionError | ConnectionError | OSError):
            ev.connection = True
        else:
            _gather_sdk(e, ev)
    return ev


def _gather_sdk(e: BaseException, ev: _Evidence) -> None:
    """Duck-typed reading of SDK errors (openai, httpx, google-genai) without importing them."""
    status = getattr(e, "status_code", None)
    if status is None:
        code = getattr(e, "code", None)
        status = code if isinstance(code, int) else None
    if isinstance(status, int) and ev.status is None and status > 0:
        ev.status = status
    response = getattr(e, "response", None)
    if response is not None:
        ev.headers.update(_headers(getattr(response, "headers", None)))
    body = getattr(e, "body", None)
    if status is None and isinstance(body, Mapping) and ("message" in body or "code" in body):
        ev.in_band = True  # e.g. openai.APIError for an error object inside a 200 stream
    for attr in ("body", "details", "message", "status"):
        value = getattr(e, attr, None)
        if value is not None and not callable(value):
            ev.texts.append(_as_text(value))
    name = type(e).__name__
    if "Timeout" in name:
        ev.timeout = True
    elif "Connect" in name or "Network" in name or "RemoteProtocol" in name:
        ev.connection = True


MAX_TAPPED_BODY = 2048
#: OpenAI says "try again in 20ms" for token limits: re-probing that often helps nobody.
MIN_RETRY_AFTER_S = 1.0
TappedResponse = tuple[int, Mapping[str, str], str]  # status, headers, body text

# -- headers the plugins drop ---------------------------------------------------------------


class ResponseTap:
    """Keeps the status and headers of the last error response a plugin's HTTP client saw.

    LiveKit re-raises a stream's error from ``__anext__`` inside an ``except`` block, which
    replaces the error's ``__context__``: the aiohttp error that carried ``Retry-After`` is
    gone by the time the guard sees it. The chain gives aiohttp-based plugins a session traced
    by this tap, and the guard reads the headers back from here.

    WebSocket close frames are kept the same way, as (close code, no headers, reason): the
    plugins raise ``APIStatusError(status_code=close_code)`` and drop the reason, yet the
    reason is all that tells ElevenLabs' 1008 "exceeds your quota" from its 1008 "Invalid
    API key" or a 1008 about a malformed message.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: tuple[float, int, dict[str, str], str] | None = None

    def record(self, status: int, headers: Mapping[str, str], body: str = "") -> None:
        if status >= 400:
            self._last = (
                self._clock(),
                status,
                {k.lower(): v for k, v in headers.items()},
                body[:MAX_TAPPED_BODY],
            )

    def record_close(self, code: int, reason: str) -> None:
        """A close frame a server sent (a normal 1000 close is no error and is not kept)."""
        if code != aiohttp.WSCloseCode.OK:
            self.record(code, {}, reason)

    def recent(self, since: float) -> TappedResponse | None:
        """The last error response seen at or after ``since`` (the tap's clock)."""
        if self._last is None or self._last[0] < since:
            return None
        return self._last[1], self._last[2], self._last[3]

    def now(self) -> float:
        return self._clock()

    def aiohttp_trace(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()

        async def on_end(
            _session: aiohttp.ClientSession,
            _ctx: object,
            params: aiohttp.TraceRequestEndParams,
        ) -> None:
            response = params.response
            body = ""
            if response.status >= 400:
                # error bodies are small; read() caches them, so the plugin still sees them
                with contextlib.suppress(Exception):
                    raw = await asyncio.wait_for(response.read(), 0.5)
                    body = raw[:MAX_TAPPED_BODY].decode("utf-8", "replace")
            self.record(response.status, response.headers, body)

        trace.on_request_end.append(on_end)
        return trace

    def websocket_class(self) -> type[aiohttp.ClientWebSocketResponse]:
        """A ``ws_response_class`` for the traced session: records each close frame received.

        aiohttp's trace hooks see no WebSocket frames; its session's public
        ``ws_response_class`` is the one place that does, without touching plugin internals.
        """
        tap = self

        class TappedWebSocketResponse(aiohttp.ClientWebSocketResponse):
            async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:  # type: ignore[override]
                msg: aiohttp.WSMessage = await super().receive(timeout)
                if msg.type is aiohttp.WSMsgType.CLOSE and isinstance(msg.data, int):
                    tap.record_close(msg.data, msg.extra if isinstance(msg.extra, str) else "")
                return msg

        return TappedWebSocketResponse

    def httpx_hook(self) -> Callable[[Any], Awaitable[None]]:
        """A ``response`` event hook for the httpx client inside the OpenAI SDK."""

        async def on_response(response: Any) -> None:
            status = int(getattr(response, "status_code", 0))
            if status < 400:
                return
            body = ""
            with contextlib.suppress(Exception):
                raw = await asyncio.wait_for(response.aread(), 0.5)
                body = bytes(raw)[:MAX_TAPPED_BODY].decode("utf-8", "replace")
            self.record(status, response.headers, body)

        return on_response


# -- retry-after ---------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _parse_duration(value: str) -> float | None:
    """``"20"``, ``"1.5"``, ``"6m0s"``, ``"20ms"``, ``"27s"`` -> seconds."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def retry_after_from_headers(
    headers: Mapping[str, str], *, now: float | None = None
) -> float | None:
    """Seconds to wait, from the headers providers actually send on 429."""
    h = {k.lower(): v for k, v in headers.items()}
    now = time.time() if now is None else now
    if "retry-after-ms" in h:
        try:
            return max(0.0, float(h["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    if "retry-after" in h:
        value = h["retry-after"].strip()
        seconds = _parse_duration(value)
        if seconds is not None:
            return seconds
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
            return max(0.0, when - now)
        except (TypeError, ValueError):
            pass
    waits = [
        s
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if name in h and (s := _parse_duration(h[name])) is not None
    ]
    if waits:
        return max(waits)
    if "x-ratelimit-reset" in h:
        try:
            value_f = float(h["x-ratelimit-reset"])
        except ValueError:
            return None
        # epoch seconds (or ms) vs a relative number of seconds
        if value_f > 1e12:
            value_f /= 1000.0
        return max(0.0, value_f - now) if value_f > 1e9 else value_f
    return None


_BODY_RETRY = [
    re.compile(r'"retryDelay"\s*:\s*"(\d+(?:\.\d+)?)s"'),
    re.compile(r"(?i)retry in (\d+(?:\.\d+)?)\s*(?:s|sec|seconds)\b"),
    re.compile(r"(?i)try again in (\d+(?:\.\d+)?)\s*(ms|s)\b"),
]


def retry_after_from_body(text: str) -> float | None:
    for pattern in _BODY_RETRY:
        m = pattern.search(text)
        if m:
            seconds = float(m.group(1))
            if m.lastindex and m.lastindex >= 2 and m.group(2) == "ms":
                seconds /= 1000.0
            return seconds
    return None


# -- the rules -----------------------------------------------------------------------------

_QUOTA = re.compile(
    r"(?i)insufficient_quota|quota_exceeded|exceeded your current quota|quota exceeded"
    r"|exceeds your quota"  # ElevenLabs' close reason and message: "This request exceeds..."
    r"|out of credits|insufficient credits|credit limit|not enough credits|credits? (?:are )?exhausted"
    r"|payment_required|payment required|billing|character_limit|usage limit|limit_exceeded"
    r"|PerDay"
)
_RATE_WINDOW = re.compile(r"(?i)PerMinute|per minute|requests per|rate limit|rate_limit")
_REQUEST_FAULT = re.compile(
    r"(?i)context_length_exceeded|maximum context length|context length|too many tokens"
    r"|content_filter|content filter|content_policy|safety|blocked|prompt_feedback"
    r"|prompt is too long|string_above_max_length|input too long|text too long"
)
_KEY = re.compile(
    r"(?i)invalid_api_key|invalid api key|incorrect api key|unauthorized|api key not valid|PERMISSION_DENIED|UNAUTHENTICATED"
)
_EMPTY = re.compile(
    r"(?i)no audio frames were pushed|no response generated|empty (?:response|result|transcript)"
)
_IN_BAND = re.compile(r"(?i)returned error|\"type\"\s*:\s*\"error\"|non-audio data")


def classify(
    exc: BaseException,
    *,
    secrets: Iterable[str | None] = (),
    now: float | None = None,
    response: TappedResponse | None = None,
) -> Failure:
    """Classify one failed attempt. ``secrets`` are scrubbed from the message verbatim.

    ``response`` is the (status, headers) of the error response, when a :class:`ResponseTap`
    saw it and the plugin's exception no longer carries it.
    """
    if isinstance(exc, ClassifiedError):
        return exc.failure
    ev = _gather(exc)
    if response is not None and not ev.truncated:
        # (a cut body followed a 2xx: an error response the tap saw meanwhile is another's)
        tapped_status, tapped_headers, tapped_body = response
        if ev.status is None or ev.status == tapped_status:
            ev.status = tapped_status
            for k, v in tapped_headers.items():
                ev.headers.setdefault(k.lower(), v)
            ev.texts.append(tapped_body)
    text = ev.text
    status = ev.status
    message = scrub(_describe(exc, ev), secrets)

    def failure(kind: FailureKind, retry_after: float | None = None) -> Failure:
        return Failure(kind=kind, message=message, status=status, retry_after_s=retry_after)

    if ev.guard_kind is not None:
        return failure(ev.guard_kind)
    if ev.truncated and status is None:
        return failure(FailureKind.TRUNCATED)  # a 2xx body cut mid-way (e.g. /tts/bytes)

    retry_after = retry_after_from_headers(ev.headers, now=now)
    if retry_after is None:
        retry_after = retry_after_from_body(text)
    if retry_after is not None:
        retry_after = max(retry_after, MIN_RETRY_AFTER_S)

    is_http = status is not None and 100 <= status < 600
    is_ws_close = status is not None and 1000 <= status < 5000

    if status == 402 or (
        _QUOTA.search(text) and (status in (None, 400, 401, 403, 429) or is_ws_close)
    ):
        # Gemini says "exceeded your current quota" for per-minute limits too: a short
        # RetryInfo on a per-minute quota is a rate limit, not an exhausted quota.
        if status == 429 and _RATE_WINDOW.search(text) and "PerDay" not in text:
            return failure(FailureKind.RATE_LIMITED, retry_after)
        return Failure(
            kind=FailureKind.QUOTA_EXHAUSTED,
            message=message,
            status=status,
            retry_after_s=retry_after,
        )
    if status == 429:
        return failure(FailureKind.RATE_LIMITED, retry_after)
    if is_http:
        assert status is not None
        if status in (401, 403):
            return failure(FailureKind.KEY_REJECTED)
        if status == 408:
            return failure(FailureKind.TIMEOUT)
        if status >= 500:
            return failure(FailureKind.SERVER_ERROR, retry_after)
        if status == 400 and _KEY.search(text):
            return failure(FailureKind.KEY_REJECTED)  # Gemini: 400 "API key not valid"
        if status in (400, 413, 422) and _REQUEST_FAULT.search(text):
            return failure(FailureKind.REQUEST_FAULT)
        if 400 <= status < 500:
            return failure(FailureKind.UNKNOWN)
    if is_ws_close:
        assert status is not None
        return failure(_ws_close_kind(status, text))
    if _REQUEST_FAULT.search(text) and not ev.connection:
        return failure(FailureKind.REQUEST_FAULT)
    if _KEY.search(text):
        return failure(FailureKind.KEY_REJECTED)
    if _EMPTY.search(text):
        return failure(FailureKind.EMPTY_RESULT)
    if ev.timeout:
        return failure(FailureKind.TIMEOUT)
    if ev.ws_close:
        return failure(FailureKind.TRUNCATED)
    if _IN_BAND.search(text) or ev.in_band:
        return failure(FailureKind.IN_BAND_ERROR)
    if ev.connection:
        return failure(FailureKind.CONNECTION_ERROR)
    if isinstance(exc, APIError) and type(exc) is APIError:
        # a plain APIError from a plugin is an error the provider reported inside a response
        return failure(FailureKind.IN_BAND_ERROR)
    return failure(FailureKind.UNKNOWN)


def _ws_close_kind(code: int, text: str) -> FailureKind:
    """The kind of a close frame whose reason (in ``text``, when recovered) named no quota.

    A 1008 (policy violation) whose reason does not name the key stays IN_BAND_ERROR: ElevenLabs
    sends 1008 for an invalid key and for exhausted quota, but also for "something went wrong,
    you are not charged", an idle socket and a malformed message. When the reason was lost
    (no :class:`ResponseTap` on the session) KEY_REJECTED would keep a working provider off
    until its key changes and QUOTA_EXHAUSTED for an hour or more; a short, retryable open is
    the least harmful, and the half-open probe (HTTP, whose 401 body names ``quota_exceeded``
    or ``invalid_api_key``) then gives the precise kind.
    """
    if code == 1008 or code in (4001, 4003, 4401, 4403):
        return (
            FailureKind.KEY_REJECTED
            if _KEY.search(text) or code != 1008
            else FailureKind.IN_BAND_ERROR
        )
    if code in (1011, 1012, 1013, 1014):
        return FailureKind.SERVER_ERROR
    if code == 1000:
        return FailureKind.TRUNCATED
    if code == 4029:
        return FailureKind.RATE_LIMITED
    return FailureKind.CONNECTION_ERROR


def _describe(exc: BaseException, ev: _Evidence) -> str:
    parts = [type(exc).__name__]
    if ev.status is not None:
        parts.append(str(ev.status))
    detail = next((t for t in ev.texts if t), "") or str(exc)
    extra = next((t for t in ev.texts[1:] if t and t != detail), "")
    parts.append(detail)
    if extra:
        parts.append(extra)
    return " ".join(parts)


def failure_as_error(key: str, failure: Failure) -> ClassifiedError:
    return ClassifiedError(key, failure)


def body_of(exc: BaseException) -> Any:
    """The first response body found in the chain (for logs that are already scrubbed)."""
    for e in _chain(exc):
        body = getattr(e, "body", None)
        if body is not None:
            return body
    return None
