"""A local Gemini API (generativelanguage REST) that fails on command.

It speaks what the LiveKit Google LLM plugin sends through the google-genai SDK:
``POST /{v1|v1beta}/models/{model}:streamGenerateContent?alt=sse`` (SSE ``data:`` chunks of
``candidates[0].content.parts`` text or ``functionCall``, ``finishReason`` on the last,
``usageMetadata``), ``:generateContent`` (one JSON body) and ``GET /{version}/models``, with the
API key in ``x-goog-api-key`` (or ``?key=``). Errors are Google's
``{"error": {"code", "message", "status", "details"}}``, including the quirk that an invalid
key is ``400 INVALID_ARGUMENT`` (reason ``API_KEY_INVALID``), not 401.

Point the plugin here with ``google.LLM(api_key=..., http_options=HttpOptions(base_url=
sim.base_url))``. Faults (:mod:`plugins.sim.faults`) are taken once per request; units are
tokens.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from aiohttp import web

from plugins.local.responder import Message
from plugins.sim.fault_schedule import StreamActor, StreamStoppedError
from plugins.sim.faults import Fault, FaultType, SimState
from plugins.sim.http_common import HttpSimulator, run_cli
from plugins.sim.llm_script import (
    LlmBrain,
    ReplyFn,
    Turn,
    estimate_tokens,
    split_deltas,
)

log = structlog.get_logger(__name__)

#: The key the simulator treats as invalid (any other non-empty key is accepted).
REJECTED_KEY = "bad-key"
WORDS_PER_CHUNK = 4
REFUSALS = frozenset({FaultType.STATUS, FaultType.QUOTA, FaultType.RESET, FaultType.HANG})
MODELS = ("gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro", "gemini-3.8-flash")

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project.",
    403: "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)
_GOOGLE_502 = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 502 (Server Error)!!1</title>\n"
    "  <p><b>502.</b> <ins>That's an error.</ins>\n"
    "  <p>The server encountered a temporary error and could not complete your request."
    "<p>Please try again in 30 seconds.  <ins>That's all we know.</ins>\n"
)


def _retry_info(seconds: float) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds:g}s"}


def gemini_error_body(
    status: int,
    *,
    model: str = "gemini-2.0-flash",
    quota: bool = False,
    message: str | None = None,
    retry_after_s: float | None = None,
) -> dict[str, Any]:
    """Google's error body for ``status`` (RetryInfo in ``details`` when a delay is given)."""
    details: list[dict[str, Any]] = []
    text = _MESSAGES.get(status, f"Request failed with HTTP {status}.")
    if quota:
        text = _QUOTA_MESSAGE
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "200",
                    }
                ],
            }
        )
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            }
        )
    if status == 404:
        text = (
            f"models/{model} is not found for API version v1beta, or is not supported for "
            "generateContent. Call ListModels to see the list of available models and their "
            "supported methods."
        )
    if retry_after_s is not None:
        details.append(_retry_info(retry_after_s))
    error: dict[str, Any] = {
        "code": status,
        "message": message or text,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def _invalid_key_body() -> dict[str, Any]:
    return {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        }
    }


def gemini_messages(body: Mapping[str, Any]) -> list[Message]:
    """A generateContent request as the (role, text) history the reply function reads."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ValueError("* GenerateContentRequest.contents: contents is not specified")
    out: list[Message] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, dict):
        text = _parts_text(system.get("parts"))
        if text:
            out.append(("system", text))
    for content in contents:
        if not isinstance(content, dict):
            raise ValueError("* GenerateContentRequest.contents: each content must be an object")
        role = "assistant" if content.get("role") == "model" else "user"
        text = _parts_text(content.get("parts"))
        if text:
            out.append((role, text))
    return out


def _parts_text(parts: Any) -> str:
    if not isinstance(parts, list):
        return ""
    return " ".join(str(p["text"]) for p in parts if isinstance(p, dict) and p.get("text"))


class GeminiSimulator(HttpSimulator):
    """The Gemini API on 127.0.0.1; pass ``base_url`` as ``HttpOptions(base_url=...)``.

    ``api_key``: the only key accepted (None: any non-empty key but :data:`REJECTED_KEY`).
    """

    name = "gemini"

    def __init__(
        self,
        state: SimState | None = None,
        *,
        api_key: str | None = None,
        reply: ReplyFn | None = None,
        chunk_interval_s: float = 0.0,
    ) -> None:
        super().__init__(state)
        self.api_key = api_key
        self.brain = LlmBrain(reply)
        self.chunk_interval_s = chunk_interval_s
        #: the last generate request body, for tests that check what the plugin sent
        self.last_request: dict[str, Any] | None = None

    def script_replies(self, replies: Iterable[str]) -> None:
        self.brain.script_replies(replies)

    def script_tool_call(
        self, name: str, arguments: Mapping[str, Any] | str | None = None, *, text: str = ""
    ) -> None:
        self.brain.script_tool_call(name, arguments, text=text)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/models/{call}", self._generate)
        app.router.add_get("/{version}/models", self._models)

    # -- errors --------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, body: Mapping[str, Any] | str) -> web.Response:
        if isinstance(body, str):
            return web.Response(text=body, status=status, content_type="text/html")
        return web.json_response(body, status=status)

    def _auth_refusal(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key", "")
        if not key:
            return self._error(403, gemini_error_body(403))
        if key == REJECTED_KEY or (self.api_key is not None and key != self.api_key):
            return self._error(400, _invalid_key_body())
        return None

    async def _refuse(self, request: web.Request, fault: Fault, model: str) -> web.StreamResponse:
        if fault.type is FaultType.RESET:
            self.reset(request)
            return web.Response(status=500)
        if fault.type is FaultType.HANG:
            return await self.hang(request)
        quota = fault.type is FaultType.QUOTA
        status = fault.status or (429 if quota else 500)
        if status == 502:
            return self._error(502, _GOOGLE_502)
        body = gemini_error_body(
            status,
            model=model,
            quota=quota,
            message=fault.message,
            retry_after_s=fault.retry_after_s,
        )
        return self._error(status, body)

    # -- GET models ----------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        refusal = self._auth_refusal(request)
        self.record(request, None, f"refused {refusal.status}" if refusal else "")
        if refusal is not None:
            return refusal
        models = [
            {
                "name": f"models/{m}",
                "version": "001",
                "displayName": m,
                "inputTokenLimit": 1048576,
                "outputTokenLimit": 8192,
                "supportedGenerationMethods": ["generateContent", "countTokens"],
            }
            for m in MODELS
        ]
        return web.json_response({"models": models})

    # -- POST models/{model}:{method} ----------------------------------------------------
    async def _generate(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["call"].partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            self.record(request, None, f"unknown method {method!r}")
            return self._error(404, gemini_error_body(404, model=model))
        refusal = self._auth_refusal(request)
        if refusal is not None:
            self.record(request, None, f"refused {refusal.status}")
            return refusal
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("Invalid JSON payload received. Expected an object.")
            history = gemini_messages(body)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            self.record(request, None, f"bad request: {e}")
            return self._error(400, gemini_error_body(400, message=str(e)))
        self.last_request = body

        turn = self.brain.next_turn(history)
        reply = _Reply(model, turn, sum(estimate_tokens(t) for _, t in history))
        fault = self.state.plan.take(reply.prompt_tokens + reply.output_tokens)
        self.record(request, fault, f"{model} {reply.prompt_tokens}+{reply.output_tokens} tokens")
        if fault is not None and fault.type in REFUSALS:
            return await self._refuse(request, fault, model)
        if fault is not None and fault.type in (FaultType.EMPTY, FaultType.SILENT):
            reply = _Reply(model, Turn(), reply.prompt_tokens)

        if method == "generateContent":
            return await self._whole(request, fault, reply)
        return await self._stream(request, fault, reply, sse=request.query.get("alt") == "sse")

    async def _whole(
        self, request: web.Request, fault: Fault | None, reply: _Reply
    ) -> web.StreamResponse:
        kind = fault.type if fault is not None else None
        if kind is FaultType.SLOW_FIRST and fault is not None:
            await self.park(fault.delay_s)
        if kind is FaultType.IN_BAND_ERROR and fault is not None:
            status = fault.status or 500
            return web.json_response(gemini_error_body(status, message=fault.message))
        data = json.dumps(reply.whole()).encode()
        if kind is FaultType.MALFORMED:
            return web.Response(body=data[: len(data) // 2], content_type="application/json")
        if kind not in (FaultType.CUT, FaultType.STALL):
            return web.Response(body=data, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        if kind is FaultType.STALL:
            await self.park()
        self.reset(request)
        return resp

    async def _stream(
        self, request: web.Request, fault: Fault | None, reply: _Reply, *, sse: bool
    ) -> web.StreamResponse:
        # Without alt=sse Gemini streams one JSON array, element by element.
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream" if sse else "application/json",
                "Vary": "Origin, X-Origin, Referer",
                "Server": "scaffolding on HTTPServer2",
            }
        )
        await resp.prepare(request)
        first = True

        def frame(payload: Mapping[str, Any] | str) -> bytes:
            nonlocal first
            text = payload if isinstance(payload, str) else json.dumps(payload)
            if sse:
                return f"data: {text}\r\n\r\n".encode()
            prefix = "[" if first else ",\r\n"
            first = False
            return (prefix + text).encode()

        async def send(chunk: bytes) -> None:
            await resp.write(chunk)
            if self.chunk_interval_s > 0:
                await self.park(self.chunk_interval_s)

        async def in_band_error() -> None:
            assert fault is not None
            status = fault.status or 500
            await resp.write(frame(gemini_error_body(status, message=fault.message)))

        actor: StreamActor[bytes] = StreamActor(
            fault,
            send=send,
            abort=lambda: self.reset(request),
            park=self.park,
            in_band_error=in_band_error,
            garbage=frame('{"candidates": [{"content": {"parts": [{"text": "'),
        )
        try:
            for chunk in reply.chunks():
                await actor.send(frame(chunk))
            await actor.finish()
            if not sse:
                await resp.write(b"]")
        except (StreamStoppedError, ConnectionResetError):
            return resp
        await resp.write_eof()
        return resp


class _Reply:
    """One generateContent answer, rendered as stream chunks or as one body."""

    def __init__(self, model: str, turn: Turn, prompt_tokens: int) -> None:
        self.model = model
        self.turn = turn
        self.prompt_tokens = prompt_tokens
        self.output_tokens = estimate_tokens(turn.text) + sum(
            estimate_tokens(c.arguments_json) + 2 for c in turn.tool_calls
        )
        self.response_id = uuid.uuid4().hex[:22]

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "promptTokenCount": self.prompt_tokens,
            "totalTokenCount": self.prompt_tokens + output_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt_tokens}],
        }
        if output_tokens:
            usage["candidatesTokenCount"] = output_tokens
        return usage

    def _response(
        self, parts: list[dict[str, Any]], finish: bool, output_tokens: int
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(output_tokens),
            "modelVersion": self.model,
            "responseId": self.response_id,
        }

    def _parts(self) -> list[list[dict[str, Any]]]:
        words = split_deltas(self.turn.text)
        groups: list[list[dict[str, Any]]] = [
            [{"text": "".join(words[i : i + WORDS_PER_CHUNK])}]
            for i in range(0, len(words), WORDS_PER_CHUNK)
        ]
        calls = [
            {"functionCall": {"name": c.name, "args": dict(c.arguments)}}
            for c in self.turn.tool_calls
        ]
        if calls:
            groups.append(calls)
        return groups

    def chunks(self) -> list[dict[str, Any]]:
        groups = self._parts() or [[{"text": ""}]]
        out = []
        sent_tokens = 0
        for i, parts in enumerate(groups):
            last = i == len(groups) - 1
            sent_tokens = (
                self.output_tokens
                if last
                else sent_tokens + sum(estimate_tokens(p.get("text", "")) for p in parts)
            )
            out.append(self._response(parts, last, sent_tokens))
        return out

    def whole(self) -> dict[str, Any]:
        parts = [p for group in self._parts() for p in group]
        if len(parts) > 1 and all("text" in p for p in parts):
            parts = [{"text": self.turn.text}]
        return self._response(parts, True, self.output_tokens)


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        lambda: GeminiSimulator(chunk_interval_s=0.03),
        argv,
        "Gemini API simulator (api key: anything but 'bad-key')",
    )


if __name__ == "__main__":
    raise SystemExit(main())
