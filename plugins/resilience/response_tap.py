"""The response tap: what a plugin's HTTP or WebSocket client saw when the plugin drops it.

LiveKit plugins raise ``APIStatusError`` without the response's headers or body (Cartesia's
``/tts/bytes`` never reads an error body at all), yet the ``Retry-After`` header and the body's
wording are what tell a rate limit from an exhausted quota. The chain gives each plugin's
client a hook from here; the guard reads back the last error response of its attempt.

Only a bounded prefix of an error body is ever read (:data:`MAX_TAPPED_BODY` bytes, within
:data:`TAP_READ_S`): a provider answering with a 10 MB error page costs the caller no more
than one answering with a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from plugins.resilience.headroom import Headroom, RateLimitSignal, read_headroom

MAX_TAPPED_BODY = 2048
#: The longest the tap waits for an error body's first bytes; the request is failing anyway.
TAP_READ_S = 0.25
TappedResponse = tuple[int, Mapping[str, str], str]  # status, headers, body text


def _text(raw: bytes) -> str:
    return raw[:MAX_TAPPED_BODY].decode("utf-8", "replace")


def _declared_length(headers: Mapping[str, str]) -> int:
    """The Content-Length a response declared; unknown counts as too large to read whole."""
    try:
        return int(headers.get("content-length") or -1)
    except ValueError:
        return -1


async def _read_aiohttp_prefix(response: aiohttp.ClientResponse) -> str:
    """The first :data:`MAX_TAPPED_BODY` bytes of an error body.

    A body that fits is read whole with ``read()``, which caches it for a plugin that reads it
    too; of a larger one only the prefix is taken from the stream (aiohttp plugins raise on an
    error status without reading its body).
    """
    length = _declared_length(response.headers)
    if 0 <= length <= MAX_TAPPED_BODY:
        return _text(await response.read())
    chunks: list[bytes] = []
    size = 0
    while size < MAX_TAPPED_BODY:
        chunk = await response.content.read(MAX_TAPPED_BODY - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return _text(b"".join(chunks))


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

    ``signals`` name the provider's rate-limit headers: every response that carries them
    (a success as much as a 429) is read into :class:`~plugins.resilience.headroom.Headroom`
    and handed to each of ``on_headroom`` (the balancer's board).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        signals: tuple[RateLimitSignal, ...] = (),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall_clock
        self._last: tuple[float, int, dict[str, str], str] | None = None
        self.signals = signals
        self.on_headroom: list[Callable[[list[Headroom]], None]] = []

    def saw_headers(self, headers: Mapping[str, str]) -> None:
        """Any response's headers: its rate-limit headroom, if the provider reports one."""
        if not self.signals or not self.on_headroom:
            return
        readings = read_headroom(headers, self.signals, now=self._wall())
        if readings:
            for listener in list(self.on_headroom):
                with contextlib.suppress(Exception):
                    listener(readings)

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
            self.saw_headers(response.headers)
            body = ""
            if response.status >= 400:
                with contextlib.suppress(Exception):
                    body = await asyncio.wait_for(_read_aiohttp_prefix(response), TAP_READ_S)
            self.record(response.status, response.headers, body)

        trace.on_request_end.append(on_end)
        return trace

    def websocket_class(self) -> type[aiohttp.ClientWebSocketResponse]:
        """A ``ws_response_class`` for the traced session: records each close frame received,
        and each in-band error frame that carries a status (Cartesia's
        ``{"type": "error", "status_code": 429, ...}``).

        aiohttp's trace hooks see no WebSocket frames; its session's public
        ``ws_response_class`` is the one place that does, without touching plugin internals.
        An in-band error matters because a plugin may not surface it: LiveKit's Cartesia
        plugin reads the error's ``done: true`` as the end of the audio, so without the tap a
        429 or a 402 on a pooled socket would look like an empty answer.
        """
        tap = self

        class TappedWebSocketResponse(aiohttp.ClientWebSocketResponse):
            async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:  # type: ignore[override]
                msg: aiohttp.WSMessage = await super().receive(timeout)
                if msg.type is aiohttp.WSMsgType.CLOSE and isinstance(msg.data, int):
                    tap.record_close(msg.data, msg.extra if isinstance(msg.extra, str) else "")
                elif msg.type is aiohttp.WSMsgType.TEXT and isinstance(msg.data, str):
                    tap.record_in_band(msg.data)
                return msg

        return TappedWebSocketResponse

    def record_in_band(self, text: str) -> None:
        """A text frame: kept when it is an error object with an HTTP-like status."""
        if '"error"' not in text[:256]:
            return  # audio chunks and timestamps are not parsed
        try:
            data = json.loads(text)
        except ValueError:
            return
        if not isinstance(data, dict) or data.get("type") != "error":
            return
        status = data.get("status_code")
        if isinstance(status, int) and status >= 400:
            self.record(status, {}, text)

    def httpx_hook(self) -> Callable[[Any], Awaitable[None]]:
        """A ``response`` event hook for the httpx client inside the OpenAI SDK."""

        async def on_response(response: Any) -> None:
            status = int(getattr(response, "status_code", 0))
            self.saw_headers(response.headers)
            if status < 400:
                return
            body = ""
            if _declared_length(response.headers) <= MAX_TAPPED_BODY:
                # small: aread() caches it, so the SDK still reads it; a large or unsized one
                # is left to the SDK (whose error carries it, capped by the classifier)
                with contextlib.suppress(Exception):
                    raw = await asyncio.wait_for(response.aread(), TAP_READ_S)
                    body = _text(bytes(raw))
            self.record(status, response.headers, body)

        return on_response
