"""A local OpenAI-compatible API (OpenAI itself, or OpenRouter) that fails on command.

It speaks the wire protocol the LiveKit OpenAI plugin (through the ``openai`` SDK) uses:
Bearer auth, ``POST /chat/completions`` as SSE chunks (role delta, content deltas, tool-call
deltas, ``finish_reason``, the usage chunk ``stream_options.include_usage`` asks for,
``data: [DONE]``) or one JSON body, ``POST /audio/speech`` (real speech of the input, as SSE
``speech.audio.delta`` events or raw audio bytes, in the ``response_format`` asked for),
``POST /audio/transcriptions`` (the words PocketSphinx hears in the uploaded WAV) and
``GET /models``. Errors carry each provider's real body: OpenAI's
``{"error": {"message", "type", "param", "code"}}`` or OpenRouter's
``{"error": {"code", "message", "metadata"}}``, including OpenRouter's error object inside a
200 stream.

Faults (:mod:`plugins.sim.faults`) are taken once per request; units are tokens for chat,
characters for speech and audio seconds for transcriptions.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import time
import uuid
import wave
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import av
import numpy as np
import structlog
from aiohttp import web

from plugins.local.responder import Message
from plugins.sim.fault_schedule import StreamActor, StreamStoppedError
from plugins.sim.faults import Fault, FaultType, SimState
from plugins.sim.http_common import HttpSimulator, huge_error_response, run_cli
from plugins.sim.llm_script import (
    LlmBrain,
    ReplyFn,
    Turn,
    estimate_tokens,
    split_deltas,
    split_json,
)
from plugins.sim.rate_limit import KeyRateLimiter, LimitDecision
from plugins.sim.tts_audio import Pcm, encode_mp3, speak, split

log = structlog.get_logger(__name__)

Flavor = Literal["openai", "openrouter"]

#: The key the simulator treats as revoked (any other non-empty key is accepted).
REJECTED_KEY = "bad-key"
TTS_SAMPLE_RATE = 24000  # OpenAI's speech is 24 kHz mono (what the plugin decodes)
AUDIO_CHUNK_BYTES = 4800
REFUSALS = frozenset(
    {FaultType.STATUS, FaultType.QUOTA, FaultType.RESET, FaultType.HANG, FaultType.HUGE_ERROR}
)
SPEECH_FORMATS = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "aac": "audio/aac",
}
MODELS = (
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4o-mini-tts",
    "tts-1",
    "gpt-4o-mini-transcribe",
    "whisper-1",
)

_CLOUDFLARE_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)


# -- error bodies ------------------------------------------------------------------------
def _mask(key: str) -> str:
    """How OpenAI echoes a rejected key: never the whole secret."""
    if len(key) <= 8:
        return key[:2] + "*" * max(len(key) - 2, 0)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"


def _openai_error(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error_body(status: int, *, model: str = "gpt-4o-mini", quota: bool = False) -> Any:
    """OpenAI's real error body for ``status`` (a str for the HTML pages its CDN serves)."""
    if quota:
        return _openai_error(
            "You exceeded your current quota, please check your plan and billing details. "
            "For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            "insufficient_quota",
        )
    if status == 400:
        return _openai_error("Invalid request.", "invalid_request_error")
    if status == 401:
        return _openai_error(
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )
    if status == 403:
        return _openai_error(
            "Country, region, or territory not supported",
            "request_forbidden",
            "unsupported_country_region_territory",
        )
    if status == 404:
        return _openai_error(
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        )
    if status == 429:
        return _openai_error(
            f"Rate limit reached for {model} in organization org-sim on requests per min "
            "(RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            "requests",
            "rate_limit_exceeded",
        )
    if status == 502:
        return _CLOUDFLARE_502
    if status == 503:
        return _openai_error(
            "The server is overloaded or not ready yet.", "server_error", "service_unavailable"
        )
    if status >= 500:
        return _openai_error(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
        )
    return _openai_error(f"Request failed with status {status}.", "invalid_request_error")


_OPENROUTER_MESSAGES = {
    400: "Bad Request",
    401: "User not found.",
    402: "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    403: "Your input was flagged by moderation. No credits were charged.",
    408: "Request timed out",
    429: "Rate limit exceeded: too many requests. Please retry shortly.",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No endpoints found that can handle the requested parameters.",
}


def openrouter_error_body(status: int, *, model: str = "openai/gpt-4o-mini") -> Any:
    """OpenRouter's ``{"error": {"code", "message", "metadata"}}`` for ``status``."""
    error: dict[str, Any] = {
        "code": status,
        "message": _OPENROUTER_MESSAGES.get(status, f"Request failed with status {status}"),
    }
    if status == 403:
        error["metadata"] = {
            "reasons": ["harassment"],
            "flagged_input": "...",
            "provider_name": "OpenAI",
            "model_slug": model,
        }
    elif status in (429, 502):
        error["metadata"] = {
            "raw": json.dumps(openai_error_body(status, model=model.split("/")[-1])),
            "provider_name": "OpenAI",
        }
    return {"error": error}


# -- request parsing ---------------------------------------------------------------------
def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def chat_messages(raw: Any) -> list[Message]:
    """OpenAI chat messages as the (role, text) history the reply function reads."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' must be a non-empty array")
    out: list[Message] = []
    for m in raw:
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError("each message must be an object with a 'role'")
        role = {"developer": "system"}.get(m["role"], m["role"])
        if role not in ("system", "user", "assistant"):
            continue  # tool results are not dialogue
        text = _content_text(m.get("content"))
        if text:
            out.append((role, text))
    return out


def _wav_to_pcm(data: bytes) -> tuple[Pcm, int]:
    """Mono int16 samples and rate of a PCM WAV upload."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2:
            raise ValueError("only 16-bit PCM WAV is supported")
        rate, channels = w.getframerate(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.int16)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return pcm, rate


def encode_speech(pcm: Pcm, response_format: str) -> bytes:
    """``pcm`` (24 kHz mono) in one of OpenAI's speech ``response_format`` values."""
    if response_format == "pcm":
        return pcm.astype("<i2").tobytes()
    if response_format == "wav":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(TTS_SAMPLE_RATE)
            w.writeframes(pcm.astype("<i2").tobytes())
        return buf.getvalue()
    if response_format == "mp3":
        return encode_mp3(pcm, TTS_SAMPLE_RATE, 64)
    containers = {"opus": ("ogg", "libopus", 48000), "flac": ("flac", "flac", TTS_SAMPLE_RATE)}
    containers["aac"] = ("adts", "aac", TTS_SAMPLE_RATE)
    if response_format not in containers:
        raise ValueError(f"unsupported response_format {response_format!r}")
    fmt, codec_name, rate = containers[response_format]
    return _encode_container(pcm, fmt, codec_name, rate)


def _encode_container(pcm: Pcm, fmt: str, codec_name: str, rate: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream: Any = out.add_stream(codec_name, rate=rate)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = TTS_SAMPLE_RATE
        for f in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _sse(data: Mapping[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


class OpenAISimulator(HttpSimulator):
    """OpenAI's (or OpenRouter's) API on 127.0.0.1; ``base_url`` is the plugin's ``base_url``.

    ``api_key``: the only key accepted (None: any non-empty key but :data:`REJECTED_KEY`).
    ``token_interval_s``: pause between streamed chunks (0 for tests; a few ms sounds real).
    ``rate_limit``: each key's own request and token limits on chat completions
    (:class:`~plugins.sim.rate_limit.KeyRateLimiter`), reported on every answer in OpenAI's
    ``x-ratelimit-*`` headers (OpenRouter: only on its own 429, ``X-RateLimit-*`` with the
    reset in epoch ms, as it does); over the limit, a 429 with ``retry-after``.
    """

    def __init__(
        self,
        state: SimState | None = None,
        *,
        flavor: Flavor = "openai",
        api_key: str | None = None,
        reply: ReplyFn | None = None,
        token_interval_s: float = 0.0,
        rate_limit: KeyRateLimiter | None = None,
    ) -> None:
        super().__init__(state)
        self.rate_limit = rate_limit
        self._key_ids: dict[str, str] = {}
        if flavor not in ("openai", "openrouter"):
            raise ValueError(f"flavor must be 'openai' or 'openrouter', got {flavor!r}")
        self.flavor: Flavor = flavor
        self.credit_usd: tuple[float, float | None] = (0.0, None)  # OpenRouter: (spent, limit)
        self.name = flavor
        self.base_path = "/api/v1" if flavor == "openrouter" else "/v1"
        self.api_key = api_key
        self.brain = LlmBrain(reply)
        self.token_interval_s = token_interval_s
        #: the last chat request body, for tests that check what the plugin sent
        self.last_chat_request: dict[str, Any] | None = None

    # -- scripting -----------------------------------------------------------------------
    def script_replies(self, replies: Iterable[str]) -> None:
        self.brain.script_replies(replies)

    def script_tool_call(
        self, name: str, arguments: Mapping[str, Any] | str | None = None, *, text: str = ""
    ) -> None:
        self.brain.script_tool_call(name, arguments, text=text)

    # -- routes --------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        p = self.base_path
        app.router.add_post(f"{p}/chat/completions", self._chat)
        app.router.add_post(f"{p}/audio/speech", self._speech)
        app.router.add_post(f"{p}/audio/transcriptions", self._transcriptions)
        app.router.add_get(f"{p}/models", self._models)
        if self.flavor == "openrouter":
            app.router.add_get(f"{p}/key", self._key_info)

    # -- errors --------------------------------------------------------------------------
    def error_response(
        self,
        status: int,
        *,
        model: str = "gpt-4o-mini",
        quota: bool = False,
        message: str | None = None,
        retry_after_s: float | None = None,
    ) -> web.Response:
        headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
        if retry_after_s is not None:
            headers["Retry-After"] = f"{retry_after_s:g}"
            if self.flavor == "openai":
                headers["retry-after-ms"] = f"{retry_after_s * 1000:.0f}"
        if status == 429 and self.flavor == "openai" and not quota:
            headers.update(
                {
                    "x-ratelimit-limit-requests": "500",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{retry_after_s or 0.12:g}s",
                }
            )
        body: Any
        if self.flavor == "openrouter":
            body = openrouter_error_body(status, model=model)
        else:
            body = openai_error_body(status, model=model, quota=quota)
        if isinstance(body, str):
            return web.Response(text=body, status=status, content_type="text/html", headers=headers)
        if message is not None:
            body["error"]["message"] = message
        return web.json_response(body, status=status, headers=headers)

    def _auth_refusal(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not key:
            if self.flavor == "openrouter":
                return self.error_response(401, message="No auth credentials found")
            return self.error_response(
                401,
                message="You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). "
                "You can obtain an API key from https://platform.openai.com/account/api-keys.",
            )
        if key == REJECTED_KEY or (self.api_key is not None and key != self.api_key):
            if self.flavor == "openrouter":
                return self.error_response(401)
            return self.error_response(
                401,
                message=f"Incorrect API key provided: {_mask(key)}. You can find your API key "
                "at https://platform.openai.com/account/api-keys.",
            )
        return None

    async def _refuse(self, request: web.Request, fault: Fault, model: str) -> web.StreamResponse:
        """Act out a fault that refuses the request before any answer."""
        if fault.type is FaultType.RESET:
            self.reset(request)
            return web.Response(status=500)
        if fault.type is FaultType.HANG:
            return await self.hang(request)
        if fault.type is FaultType.HUGE_ERROR:
            return huge_error_response(fault.status or 500, fault.message or "upstream failure")
        if fault.type is FaultType.QUOTA:
            status = fault.status or (402 if self.flavor == "openrouter" else 429)
            return self.error_response(
                status,
                model=model,
                quota=status == 429,
                message=fault.message,
                retry_after_s=fault.retry_after_s,
            )
        return self.error_response(
            fault.status or 500,
            model=model,
            message=fault.message,
            retry_after_s=fault.retry_after_s,
        )

    def _in_band_error(self, fault: Fault, chat_id: str, model: str) -> dict[str, Any]:
        status = fault.status or 500
        if self.flavor == "openrouter":
            return {
                "id": chat_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "provider": "OpenAI",
                "error": {
                    "code": "server_error" if status >= 500 else status,
                    "message": fault.message or "Provider disconnected unexpectedly",
                },
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
            }
        body: dict[str, Any] = openai_error_body(status if status != 502 else 500, model=model)
        if fault.message:
            body["error"]["message"] = fault.message
        return body

    async def _bad_request(
        self, request: web.Request, message: str, param: str | None = None
    ) -> web.Response:
        self.record(request, None, f"bad request: {message}")
        if self.flavor == "openrouter":
            return self.error_response(400, message=message)
        return web.json_response(
            _openai_error(message, "invalid_request_error", None, param), status=400
        )

    async def _json_body(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    # -- GET /models ---------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        refusal = self._auth_refusal(request)
        self.record(request, None, f"refused {refusal.status}" if refusal else "")
        if refusal is not None:
            return refusal
        ids = [f"openai/{m}" for m in MODELS] if self.flavor == "openrouter" else list(MODELS)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
                    for m in ids
                ],
            }
        )

    async def _key_info(self, request: web.Request) -> web.Response:
        """OpenRouter's ``GET /key``: the key's spend and credit limit (``credit_usd``)."""
        refusal = self._auth_refusal(request)
        self.record(request, None, f"refused {refusal.status}" if refusal else "")
        if refusal is not None:
            return refusal
        used, limit = self.credit_usd
        remaining = None if limit is None else max(limit - used, 0.0)
        return web.json_response(
            {
                "data": {
                    "label": "sim-key",
                    "usage": used,
                    "limit": limit,
                    "limit_remaining": remaining,
                    "is_free_tier": False,
                    "rate_limit": {"requests": 200, "interval": "10s"},
                }
            }
        )

    # -- rate limits ---------------------------------------------------------------------
    def name_keys(self, keys: Iterable[str]) -> None:
        """Name ``keys`` ``key1``, ``key2``... in this order (others: in the order first seen)."""
        for key in keys:
            self._key_ids.setdefault(key, f"key{len(self._key_ids) + 1}")

    def key_id(self, request: web.Request) -> str:
        """``key1``, ``key2``...: which key a request came on, in order first seen."""
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        return self._key_ids.setdefault(key, f"key{len(self._key_ids) + 1}")

    def _limit_headers(self, decision: LimitDecision | None) -> dict[str, str]:
        """What a successful answer says of the key's limits (OpenRouter: nothing)."""
        if decision is None or self.flavor != "openai":
            return {}
        return decision.headers

    def _rate_limited(self, decision: LimitDecision, model: str) -> web.Response:
        wait = max(decision.retry_after_s, 0.001)
        headers = {
            "x-request-id": f"req_{uuid.uuid4().hex}",
            "retry-after": str(max(1, math.ceil(wait))),
        }
        if self.flavor == "openai":
            headers["retry-after-ms"] = f"{wait * 1000:.0f}"
            headers.update(decision.headers)
            unit = "RPM" if decision.dimension == "requests" else "TPM"
            assert self.rate_limit is not None
            limit = getattr(self.rate_limit, decision.dimension)
            body: Any = _openai_error(
                f"Rate limit reached for {model} in organization org-sim on "
                f"{decision.dimension} per min ({unit}): Limit {limit}, Used {limit}, "
                f"Requested 1. Please try again in {wait:.3g}s. Visit "
                "https://platform.openai.com/account/rate-limits to learn more.",
                decision.dimension,
                "rate_limit_exceeded",
            )
        else:
            limit = decision.headers.get(f"x-ratelimit-limit-{decision.dimension}", "0")
            headers.update(
                {
                    "X-RateLimit-Limit": limit,
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(int((time.time() + wait) * 1000)),
                }
            )
            body = openrouter_error_body(429, model=model)
        return web.json_response(body, status=429, headers=headers)

    # -- POST /chat/completions ----------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        key_id = self.key_id(request)
        client_id = request.headers.get("X-Client-Request-Id", "")
        refusal = self._auth_refusal(request)
        if refusal is not None:
            self.record(request, None, f"refused {refusal.status}", status=refusal.status)
            return refusal
        body = await self._json_body(request)
        if body is None:
            return await self._bad_request(
                request,
                "We could not parse the JSON body of your "
                "request. The OpenAI API expects a JSON payload.",
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return await self._bad_request(request, "you must provide a model parameter", "model")
        try:
            history = chat_messages(body.get("messages"))
        except ValueError as e:
            return await self._bad_request(request, str(e), "messages")
        self.last_chat_request = body

        turn = self.brain.next_turn(history)
        prompt_tokens = sum(estimate_tokens(t) for _, t in history)
        completion_tokens = estimate_tokens(turn.text) + sum(
            estimate_tokens(c.arguments_json) + 2 for c in turn.tool_calls
        )
        limits: LimitDecision | None = None
        if self.rate_limit is not None:
            limits = self.rate_limit.take(key_id, prompt_tokens + completion_tokens)
            if not limits.allowed:
                self.record(
                    request,
                    None,
                    f"{model} rate limited ({limits.dimension})",
                    status=429,
                    key=key_id,
                    client_id=client_id,
                )
                return self._rate_limited(limits, model)
        fault = self.state.plan.take(prompt_tokens + completion_tokens)
        refused = fault is not None and fault.type in REFUSALS
        self.record(
            request,
            fault,
            f"{model} {prompt_tokens}+{completion_tokens} tokens",
            status=(fault.status or 500) if refused and fault is not None else 200,
            key=key_id,
            client_id=client_id,
        )
        if fault is not None and fault.type in REFUSALS:
            return await self._refuse(request, fault, model)
        if fault is not None and fault.type in (FaultType.EMPTY, FaultType.SILENT):
            turn, completion_tokens = Turn(), 0
        if model == "auto" and self.flavor == "openrouter":
            model = "openai/gpt-4o-mini"

        chat = _Chat(
            chat_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model=model,
            turn=turn,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return await self._stream_chat(
                request, fault, chat, include_usage, self._limit_headers(limits)
            )
        return await self._whole_chat(request, fault, chat, self._limit_headers(limits))

    async def _stream_chat(
        self,
        request: web.Request,
        fault: Fault | None,
        chat: _Chat,
        include_usage: bool,
        headers: Mapping[str, str],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": f"req_{uuid.uuid4().hex}",
                **headers,
            }
        )
        await resp.prepare(request)
        if self.flavor == "openrouter":
            await resp.write(b": OPENROUTER PROCESSING\n\n")

        async def send(chunk: bytes) -> None:
            await resp.write(chunk)
            if self.token_interval_s > 0:
                await self.park(self.token_interval_s)

        async def in_band_error() -> None:
            assert fault is not None
            await resp.write(_sse(self._in_band_error(fault, chat.id, chat.model)))

        actor: StreamActor[bytes] = StreamActor(
            fault,
            send=send,
            abort=lambda: self.reset(request),
            park=self.park,
            in_band_error=in_band_error,
            garbage=b'data: {"id":"' + chat.id.encode() + b'","choices":[{"delta":{"content":\n\n',
        )
        await resp.write(
            _sse(chat.chunk({"role": "assistant", "content": ""}, usage=include_usage))
        )
        try:
            for delta in chat.deltas():
                await actor.send(_sse(chat.chunk(delta, usage=include_usage)))
            finish = "tool_calls" if chat.turn.tool_calls else "stop"
            await actor.send(_sse(chat.chunk({}, finish_reason=finish, usage=include_usage)))
            if include_usage:
                await actor.send(_sse(chat.usage_chunk()))
            await actor.finish()
            await resp.write(b"data: [DONE]\n\n")
        except StreamStoppedError:
            if actor.stalled:  # released by shutdown: drop, never end the stream cleanly
                self.reset(request)
            return resp
        except ConnectionResetError:
            log.debug("client went away mid-stream", simulator=self.name)
            return resp
        await resp.write_eof()
        return resp

    async def _whole_chat(
        self, request: web.Request, fault: Fault | None, chat: _Chat, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        text = json.dumps(chat.completion()).encode()
        return await self._send_body(
            request,
            fault,
            text,
            "application/json",
            in_band=lambda f: json.dumps(self._in_band_error(f, chat.id, chat.model)).encode(),
            headers=headers,
        )

    async def _send_body(
        self,
        request: web.Request,
        fault: Fault | None,
        body: bytes,
        content_type: str,
        in_band: Callable[[Fault], bytes],
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """A non-streamed answer, with a stream fault acted out on its bytes."""
        kind = fault.type if fault is not None else None
        extra = dict(headers or {})
        if kind is FaultType.SLOW_FIRST and fault is not None:
            await self.park(fault.delay_s)
        if kind is FaultType.IN_BAND_ERROR and fault is not None:
            return web.Response(body=in_band(fault), content_type="application/json", headers=extra)
        if kind is FaultType.MALFORMED:
            body = body[: max(1, len(body) // 2)]
        if kind not in (FaultType.CUT, FaultType.STALL):
            return web.Response(body=body, content_type=content_type, headers=extra)
        resp = web.StreamResponse(headers={"Content-Type": content_type, **extra})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        if kind is FaultType.STALL:
            await self.park()
        self.reset(request)
        return resp

    # -- POST /audio/speech --------------------------------------------------------------
    async def _speech(self, request: web.Request) -> web.StreamResponse:
        refusal = self._auth_refusal(request)
        if refusal is not None:
            self.record(request, None, f"refused {refusal.status}")
            return refusal
        body = await self._json_body(request)
        if body is None:
            return await self._bad_request(request, "request body must be a JSON object")
        text, model = body.get("input"), body.get("model")
        fmt = body.get("response_format", "mp3")
        if not isinstance(text, str) or not text.strip():
            return await self._bad_request(request, "'input' must be a non-empty string", "input")
        if not isinstance(model, str) or not model:
            return await self._bad_request(request, "you must provide a model parameter", "model")
        if fmt not in SPEECH_FORMATS:
            return await self._bad_request(
                request,
                f"Invalid value: '{fmt}'. Supported values are: {', '.join(SPEECH_FORMATS)}.",
                "response_format",
            )
        sse = body.get("stream_format") == "sse"
        if sse and model in ("tts-1", "tts-1-hd"):
            return await self._bad_request(
                request, f"stream_format 'sse' is not supported for {model}", "stream_format"
            )

        fault = self.state.plan.take(len(text))
        self.record(request, fault, f"{model} {len(text)} chars {fmt}{' sse' if sse else ''}")
        if fault is not None and fault.type in REFUSALS:
            return await self._refuse(request, fault, model)
        kind = fault.type if fault is not None else None
        pcm = await asyncio.to_thread(speak, text, TTS_SAMPLE_RATE, silent=kind is FaultType.SILENT)
        if kind is FaultType.EMPTY:
            pcm = pcm[:0]
        audio = await asyncio.to_thread(encode_speech, pcm, fmt)
        chunks = split(audio, AUDIO_CHUNK_BYTES) if audio else []

        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream" if sse else SPEECH_FORMATS[fmt],
                "x-request-id": f"req_{uuid.uuid4().hex}",
            }
        )
        await resp.prepare(request)

        async def in_band_error() -> None:
            assert fault is not None
            if not sse:  # a raw audio body has no way to say "error": it just ends
                self.reset(request)
                return
            err = openai_error_body(fault.status or 500)
            await resp.write(_sse({"type": "error", "error": err["error"]}))

        def frame(chunk: bytes) -> bytes:
            if not sse:
                return chunk
            return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()})

        garbage = (
            _sse({"type": "speech.audio.delta", "audio": "!not-base64!"})
            if sse
            else b"\xff\xf1garbage"
        )
        actor: StreamActor[bytes] = StreamActor(
            fault,
            send=resp.write,
            abort=lambda: self.reset(request),
            park=self.park,
            in_band_error=in_band_error,
            garbage=garbage,
        )
        try:
            for chunk in chunks:
                await actor.send(frame(chunk))
            await actor.finish()
            if sse:
                tokens = estimate_tokens(text)
                out_tokens = math.ceil(pcm.size / TTS_SAMPLE_RATE * 50)
                usage = {
                    "input_tokens": tokens,
                    "output_tokens": out_tokens,
                    "total_tokens": tokens + out_tokens,
                }
                await resp.write(_sse({"type": "speech.audio.done", "usage": usage}))
        except (StreamStoppedError, ConnectionResetError):
            return resp
        await resp.write_eof()
        return resp

    # -- POST /audio/transcriptions ------------------------------------------------------
    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        refusal = self._auth_refusal(request)
        if refusal is not None:
            self.record(request, None, f"refused {refusal.status}")
            return refusal
        try:
            form = await request.post()
        except ValueError:
            return await self._bad_request(request, "request must be multipart/form-data")
        upload, model = form.get("file"), form.get("model")
        fmt = str(form.get("response_format", "json"))
        if not isinstance(model, str) or not model:
            return await self._bad_request(request, "you must provide a model parameter", "model")
        if not isinstance(upload, web.FileField):
            return await self._bad_request(request, "'file' must be an uploaded file", "file")
        if fmt not in ("json", "verbose_json", "text"):
            return await self._bad_request(
                request, f"response_format {fmt!r} is not supported here", "response_format"
            )
        try:
            pcm, rate = _wav_to_pcm(upload.file.read())
        except (wave.Error, EOFError, ValueError) as e:
            return await self._bad_request(
                request,
                f"Invalid file format ({e}). Supported formats: ['wav'] (16-bit PCM)",
                "file",
            )
        seconds = pcm.size / rate if rate else 0.0
        fault = self.state.plan.take(seconds)
        self.record(request, fault, f"{model} {seconds:.2f}s")
        if fault is not None and fault.type in REFUSALS:
            return await self._refuse(request, fault, model)

        if fault is not None and fault.type in (FaultType.EMPTY, FaultType.SILENT):
            text = ""
        else:
            text = await asyncio.to_thread(_transcribe, pcm, rate)
        payload: bytes
        content_type = "application/json"
        if fmt == "text":
            payload, content_type = (text + "\n").encode(), "text/plain"
        elif fmt == "verbose_json":
            payload = json.dumps(
                {
                    "task": "transcribe",
                    "language": "english",
                    "duration": round(seconds, 2),
                    "text": text,
                    "segments": [],
                    "usage": {"type": "duration", "seconds": math.ceil(seconds)},
                }
            ).encode()
        elif model == "whisper-1":
            usage = {"type": "duration", "seconds": math.ceil(seconds)}
            payload = json.dumps({"text": text, "usage": usage}).encode()
        else:
            audio_tokens = math.ceil(seconds * 10)
            out_tokens = estimate_tokens(text)
            usage = {
                "type": "tokens",
                "input_tokens": audio_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                "output_tokens": out_tokens,
                "total_tokens": audio_tokens + out_tokens,
            }
            payload = json.dumps({"text": text, "usage": usage}).encode()

        def in_band(f: Fault) -> bytes:
            status = f.status if f.status and f.status != 502 else 500  # 502 is an HTML page
            return json.dumps(openai_error_body(status)).encode()

        return await self._send_body(request, fault, payload, content_type, in_band)


def _transcribe(pcm: Pcm, rate: int) -> str:
    from plugins.local.sphinx_stt import SphinxEngine

    return SphinxEngine.shared().transcribe(pcm, rate)


class _Chat:
    """One chat completion's identity and content, rendered as chunks or as one body."""

    def __init__(
        self, *, chat_id: str, model: str, turn: Turn, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.id = chat_id
        self.model = model
        self.turn = turn
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.created = int(time.time())
        self.call_ids = [f"call_{uuid.uuid4().hex[:24]}" for _ in turn.tool_calls]

    def deltas(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"content": piece} for piece in split_deltas(self.turn.text)]
        for index, (call, call_id) in enumerate(
            zip(self.turn.tool_calls, self.call_ids, strict=True)
        ):
            out.append(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
            out.extend(
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in split_json(call.arguments_json)
            )
        return out

    def chunk(
        self, delta: dict[str, Any], *, finish_reason: str | None = None, usage: bool = False
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_sim",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if usage:
            chunk["usage"] = None
        return chunk

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def usage_chunk(self) -> dict[str, Any]:
        chunk = self.chunk({}, usage=True)
        chunk["choices"] = []
        chunk["usage"] = self.usage()
        return chunk

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.turn.text or None,
            "refusal": None,
            "annotations": [],
        }
        if self.turn.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments_json},
                }
                for c, call_id in zip(self.turn.tool_calls, self.call_ids, strict=True)
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if self.turn.tool_calls else "stop",
                }
            ],
            "usage": self.usage(),
            "system_fingerprint": "fp_sim",
        }


def main(argv: list[str] | None = None) -> int:
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--flavor", choices=("openai", "openrouter"), default="openai")
    known, rest = pre.parse_known_args(argv)
    flavor: Flavor = known.flavor
    return run_cli(
        lambda: OpenAISimulator(flavor=flavor, token_interval_s=0.02),
        rest,
        f"OpenAI-compatible API simulator ({flavor}; --flavor openai|openrouter)",
    )


if __name__ == "__main__":
    raise SystemExit(main())
