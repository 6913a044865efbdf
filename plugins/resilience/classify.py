"""Turn any provider failure into a :class:`Failure` the breaker can act on.

LiveKit plugins wrap provider errors in ``APIStatusError`` / ``APIConnectionError`` and often
drop the headers and body on the way (``raise ... from None`` still keeps ``__context__``), so
the classifier walks the whole exception chain and reads what each layer kept: the LiveKit
error, the OpenAI SDK error (``.response.headers``, ``.body``), aiohttp's
``ClientResponseError`` (``.headers``), google-genai's ``APIError`` (``.code``, ``.details``)
and our own guard errors. The order of the rules matters: quota wording wins over the status
code because OpenAI reports exhausted credit as 429 and ElevenLabs as 401.

Every text read from an error is capped at :data:`MAX_EVIDENCE_CHARS` before any rule looks at
it, so classifying a 10 MB error body costs what classifying a one-line one does.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import http_exceptions
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError

from plugins.resilience.failures import ClassifiedError, GuardError
from plugins.resilience.phrases import Vocabulary, vocabulary
from plugins.resilience.response_tap import TappedResponse
from plugins.resilience.retry_after import (
    MIN_RETRY_AFTER_S,
    retry_after_from_body,
    retry_after_from_headers,
)
from plugins.resilience.scrub import scrub
from plugins.resilience.types import Failure, FailureKind

#: What the rules read of any one text of an error (a message, a body): wording that decides a
#: kind comes first in every provider's error document.
MAX_EVIDENCE_CHARS = 4096


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


def _as_text(value: object, budget: int = MAX_EVIDENCE_CHARS) -> str:
    """``value`` as text, at most ``budget`` characters, without rendering what is cut.

    A body may be a 10 MB string or the dict parsed from a 10 MB JSON document: both are
    rendered only as far as the classifier reads (containers as ``json.dumps`` would).
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value[:budget]
    if isinstance(value, bytes | bytearray):
        return bytes(value[:budget]).decode("utf-8", "replace")
    parts: list[str] = []
    _render(value, parts, budget)
    return "".join(parts)[:budget]


def _render(value: object, parts: list[str], budget: int) -> int:
    """Append ``value`` rendered as JSON to ``parts`` until ``budget`` runs out; the rest."""
    if budget <= 0:
        return budget
    if isinstance(value, Mapping):
        items: Iterable[tuple[object, object]] = value.items()
        opening, closing = "{", "}"
    elif isinstance(value, list | tuple):
        items = ((None, v) for v in value)
        opening, closing = "[", "]"
    else:
        if isinstance(value, str | bytes | bytearray):
            text = json.dumps(_as_text(value, budget))
        elif value is None or isinstance(value, bool | int | float):
            text = json.dumps(value)
        else:
            text = json.dumps(str(value)[:budget])
        parts.append(text)
        return budget - len(text)
    parts.append(opening)
    budget -= 1
    for n, (k, v) in enumerate(items):
        if budget <= 0:
            break
        prefix = (", " if n else "") + ("" if k is None else json.dumps(str(k)[:budget]) + ": ")
        parts.append(prefix)
        budget = _render(v, parts, budget - len(prefix))
    parts.append(closing)
    return budget - 1


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
            ev.texts.append(_as_text(e.message))
            ev.texts.append(_as_text(e.body))
            if "closed unexpectedly" in e.message or "connection closed" in e.message:
                ev.ws_close = True
        elif isinstance(e, APIConnectionError):
            ev.connection = True
            ev.texts.append(_as_text(e.message))
        elif isinstance(e, APIError):
            ev.texts.append(_as_text(e.message))
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
            ev.texts.append(_as_text(e.message))
        elif isinstance(e, aiohttp.ClientResponseError):
            if ev.status is None:
                ev.status = e.status
            ev.headers.update(_headers(e.headers))
            ev.texts.append(_as_text(e.message))
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


# -- the rules -----------------------------------------------------------------------------

# Wording that depends on the provider (quota, key, request faults) is each provider's own:
# plugins.resilience.phrases and the providers' definitions.
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
    words: Vocabulary | None = None,
) -> Failure:
    """Classify one failed attempt. ``secrets`` are scrubbed from the message verbatim.

    ``response`` is the (status, headers) of the error response, when a :class:`ResponseTap`
    saw it and the plugin's exception no longer carries it. ``words`` is the provider's
    wording (its definition's phrases with the generic ones); generic wording alone if None.
    """
    vocab = words or vocabulary()
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
        vocab.quota.search(text) and (status in (None, 400, 401, 403, 429) or is_ws_close)
    ):
        # Gemini says "exceeded your current quota" for per-minute limits too: a short
        # RetryInfo on a per-minute quota is a rate limit, not an exhausted quota.
        if status == 429 and vocab.rate_window.search(text) and not vocab.daily.search(text):
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
        if status == 400 and vocab.key.search(text):
            return failure(FailureKind.KEY_REJECTED)  # Gemini: 400 "API key not valid"
        if status in (400, 413, 422) and vocab.request.search(text):
            return failure(FailureKind.REQUEST_FAULT)
        if 400 <= status < 500:
            return failure(FailureKind.UNKNOWN)
    if is_ws_close:
        assert status is not None
        return failure(_ws_close_kind(status, text, vocab))
    if vocab.request.search(text) and not ev.connection:
        return failure(FailureKind.REQUEST_FAULT)
    if vocab.key.search(text):
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


def _ws_close_kind(code: int, text: str, vocab: Vocabulary) -> FailureKind:
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
            if vocab.key.search(text) or code != 1008
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
