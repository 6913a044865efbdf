"""A local ElevenLabs TTS server: the stream-input WebSockets, the HTTP speech endpoints and
the subscription endpoint a health check reads remaining credit from.

The LiveKit 1.8.9 plugin streams over ``/v1/text-to-speech/{voice_id}/multi-stream-input``
(one socket, many ``context_id`` contexts: an init packet, text packets with ``flush``, then
``close_context``) and synthesizes single texts with ``POST .../stream``. Both are served,
plus the older single-context ``stream-input`` socket and the non-streaming ``POST``. Audio is
real speech of the text in the requested ``output_format`` (``pcm_<rate>`` or
``mp3_<rate>_<kbps>``; the plugin's default is ``mp3_22050_32``).

Wire details follow ElevenLabs' published schema where the LiveKit plugin agrees with it
(base64 ``audio``, ``normalizedAlignment`` / ``alignment`` with ``charStartTimesMs``, the
``contextId`` of the context), and the plugin where they differ: the schema names the final
marker ``is_final`` but the plugin (built against the live service) reads ``isFinal``.

Errors are ElevenLabs' own: ``{"detail": {"status": ..., "message": ...}}`` bodies, 401 for
both ``invalid_api_key`` and ``quota_exceeded``, 429 ``too_many_concurrent_requests`` /
``system_busy``, and on an open socket a close frame with code 1008 and the quota message.

Faults (see :mod:`plugins.sim.faults`): the plan is consulted at each handshake, at the first
text of each context, and once per HTTP synthesis; units are characters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from plugins.sim.fault_schedule import (
    REFUSALS,
    FaultSchedule,
    SocketFaults,
    StreamActor,
    StreamStoppedError,
)
from plugins.sim.faults import Fault, FaultType, SimState
from plugins.sim.http_common import HttpSimulator, run_cli
from plugins.sim.tts_audio import Pcm, encode_mp3, encode_raw, speak, split, spread

log = structlog.get_logger(__name__)

#: The key a simulator treats as revoked (any other non-empty key is accepted).
REJECTED_KEY = "bad-key"
PCM_RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000})
MP3_RATES = frozenset({22050, 44100})
MP3_BITRATES = frozenset({32, 64, 96, 128, 192})
MAX_CONTEXTS = 5
CONTEXT_KEY = "contextId"
DEFAULT_CHUNK_LENGTH_SCHEDULE = (120, 160, 250, 290)

#: ``Fault.message`` may name one of these to get that exact ElevenLabs status and text.
STATUS_DETAILS: dict[str, tuple[int, str]] = {
    "invalid_api_key": (401, "Invalid API key"),
    "needs_authorization": (
        401,
        "Neither authorization header nor xi-api-key received, please provide one.",
    ),
    "missing_permissions": (
        403,
        "The API key you used is missing the permission text_to_speech to execute this operation.",
    ),
    "too_many_concurrent_requests": (
        429,
        "Too many concurrent requests. Your current subscription is associated with a maximum "
        "of 5 concurrent requests. Please upgrade your subscription or reduce the number of "
        "concurrent requests.",
    ),
    "system_busy": (
        429,
        "We are experiencing heavy traffic, please try again later.",
    ),
    "internal_error": (500, "An internal server error occurred, please try again."),
    "service_unavailable": (503, "The service is temporarily unavailable, please retry."),
}
_STATUS_FOR_CODE = {
    401: "invalid_api_key",
    403: "missing_permissions",
    429: "too_many_concurrent_requests",
    500: "internal_error",
    503: "service_unavailable",
}


def detail_response(
    status: int,
    detail_status: str,
    message: str,
    *,
    retry_after_s: float | None = None,
) -> web.Response:
    headers = {"x-trace-id": uuid.uuid4().hex}
    if retry_after_s is not None:
        headers["Retry-After"] = f"{retry_after_s:g}"
    if status == 502:  # the edge proxy answers, not the API: an HTML page
        return web.Response(
            status=502,
            text="<html><head><title>502 Bad Gateway</title></head>"
            "<body><center><h1>502 Bad Gateway</h1></center></body></html>",
            content_type="text/html",
            headers=headers,
        )
    return web.json_response(
        {"detail": {"status": detail_status, "message": message}}, status=status, headers=headers
    )


@dataclass(frozen=True)
class OutputFormat:
    codec: str  # "pcm" | "mp3"
    sample_rate: int
    bitrate_kbps: int | None = None

    @classmethod
    def parse(cls, value: str) -> OutputFormat:
        parts = value.split("_")
        try:
            if parts[0] == "pcm" and len(parts) == 2 and int(parts[1]) in PCM_RATES:
                return cls("pcm", int(parts[1]))
            if (
                parts[0] == "mp3"
                and len(parts) == 3
                and int(parts[1]) in MP3_RATES
                and int(parts[2]) in MP3_BITRATES
            ):
                return cls("mp3", int(parts[1]), int(parts[2]))
        except ValueError:
            pass
        raise ValueError(
            f"output_format {value!r} is not served by the simulator; use pcm_<rate> "
            f"(rates {sorted(PCM_RATES)}) or mp3_<rate>_<kbps> (rates {sorted(MP3_RATES)}, "
            f"kbps {sorted(MP3_BITRATES)})"
        )

    @property
    def content_type(self) -> str:
        return "audio/mpeg" if self.codec == "mp3" else "audio/pcm"

    def encode(self, pcm: Pcm) -> bytes:
        if self.codec == "mp3":
            return encode_mp3(pcm, self.sample_rate, self.bitrate_kbps or 128)
        return encode_raw(pcm, "pcm_s16le")

    def chunk_bytes(self, chunk_ms: int) -> int:
        if self.codec == "mp3":
            return max(64, (self.bitrate_kbps or 128) * chunk_ms // 8)
        return max(2, self.sample_rate * chunk_ms // 1000 * 2)


def alignment(text: str, offset_ms: float, duration_ms: float) -> dict[str, Any]:
    """Per-character timings (proportional: the local voice gives no alignment)."""
    chars = list(text)
    spans = spread([1] * len(chars), duration_ms)
    return {
        "chars": chars,
        "charStartTimesMs": [round(offset_ms + s) for s, _ in spans],
        "charDurationsMs": [max(0, round(e - s)) for s, e in spans],
    }


class ElevenLabsSimulator(HttpSimulator):
    """ElevenLabs' ``/v1`` API on 127.0.0.1; ``base_url`` is the plugin's ``base_url``.

    ``character_limit`` / ``characters_used`` back ``GET /v1/user/subscription``; use
    :meth:`set_quota` to make the fault plan refuse exactly when that limit is reached.
    """

    name = "elevenlabs"
    base_path = "/v1"

    def __init__(
        self,
        state: SimState | None = None,
        *,
        chunk_ms: int = 50,
        character_limit: int = 100_000,
        connect_delay_s: float = 0.0,
    ) -> None:
        super().__init__(state)
        self.chunk_ms = chunk_ms
        #: added to every WebSocket handshake (a real one: DNS + TCP + TLS + upgrade)
        self.connect_delay_s = connect_delay_s
        self.character_limit = character_limit
        self.characters_used = 0
        self.next_reset_unix = int(time.time()) + 30 * 24 * 3600
        self.schedule = FaultSchedule(self.state.plan)
        self._sockets: set[web.WebSocketResponse] = set()

    def set_quota(self, character_limit: int) -> None:
        """Subscription limit and fault plan agree: refuse once ``character_limit`` is used."""
        self.character_limit = character_limit
        self.state.plan.quota_after(max(0, character_limit - self.characters_used))

    def add_routes(self, app: web.Application) -> None:
        tts = "/v1/text-to-speech/{voice_id}"
        app.router.add_get(tts + "/multi-stream-input", self._multi_stream_input)
        app.router.add_get(tts + "/stream-input", self._stream_input)
        app.router.add_post(tts + "/stream", self._speech)
        app.router.add_post(tts, self._speech)
        app.router.add_get("/v1/user/subscription", self._subscription)
        app.router.add_get("/v1/voices", self._voices)

    async def aclose(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
        await super().aclose()

    # -- shared --------------------------------------------------------------------------
    @staticmethod
    def _auth_refusal(key: str | None) -> web.Response | None:
        if not key:
            return detail_response(
                401, "needs_authorization", STATUS_DETAILS["needs_authorization"][1]
            )
        if key == REJECTED_KEY:
            return detail_response(401, "invalid_api_key", "Invalid API key")
        return None

    def quota_message(self, needed: int) -> str:
        # a refusal always reports too little credit, even when the plan injected it early
        remaining = max(0, min(self.character_limit - self.characters_used, needed - 1))
        return (
            f"This request exceeds your quota of {self.character_limit}. You have {remaining} "
            f"credits remaining, while {needed} credits are required for this request."
        )

    def refusal_response(self, fault: Fault, needed: int) -> web.Response:
        """The HTTP answer for a STATUS or QUOTA fault."""
        if fault.type is FaultType.QUOTA:
            status = fault.status or 401
            detail = "payment_required" if status == 402 else "quota_exceeded"
            return detail_response(status, detail, fault.message or self.quota_message(needed))
        if fault.message in STATUS_DETAILS:
            status, message = STATUS_DETAILS[fault.message]
            return detail_response(
                status, fault.message, message, retry_after_s=fault.retry_after_s
            )
        status = fault.status or 500
        detail = _STATUS_FOR_CODE.get(status, "error")
        message = fault.message or STATUS_DETAILS.get(detail, (status, "Request failed"))[1]
        return detail_response(status, detail, message, retry_after_s=fault.retry_after_s)

    async def _refuse(self, request: web.Request, fault: Fault, needed: int) -> web.StreamResponse:
        if fault.type is FaultType.RESET:
            self.reset(request)
            return web.Response(status=500)
        if fault.type is FaultType.HANG:
            return await self.hang(request)
        return self.refusal_response(fault, needed)

    def charge(self, characters: int) -> None:
        self.characters_used += characters

    # -- GET /v1/user/subscription, /v1/voices -------------------------------------------
    async def _subscription(self, request: web.Request) -> web.Response:
        refusal = self._auth_refusal(request.headers.get("xi-api-key"))
        self.record(request, None, f"refused {refusal.status}" if refusal else "")
        if refusal is not None:
            return refusal
        return web.json_response(
            {
                "tier": "creator",
                "character_count": self.characters_used,
                "character_limit": self.character_limit,
                "can_extend_character_limit": False,
                "allowed_to_extend_character_limit": False,
                "next_character_count_reset_unix": self.next_reset_unix,
                "voice_limit": 30,
                "professional_voice_limit": 1,
                "can_use_instant_voice_cloning": True,
                "status": "active",
                "currency": "usd",
                "billing_period": "monthly_period",
                "character_refresh_period": "monthly_period",
            }
        )

    async def _voices(self, request: web.Request) -> web.Response:
        refusal = self._auth_refusal(request.headers.get("xi-api-key"))
        self.record(request, None, f"refused {refusal.status}" if refusal else "")
        if refusal is not None:
            return refusal
        voice = {"voice_id": "hpp4J3VqNfWAUOO0d1Us", "name": "Sim Heart", "category": "premade"}
        return web.json_response({"voices": [voice]})

    # -- POST /v1/text-to-speech/{voice_id}[/stream] --------------------------------------
    async def _speech(self, request: web.Request) -> web.StreamResponse:
        refusal = self._auth_refusal(request.headers.get("xi-api-key"))
        if refusal is not None:
            self.record(request, None, f"refused {refusal.status}")
            return refusal
        try:
            fmt = OutputFormat.parse(request.query.get("output_format", "mp3_44100_128"))
        except ValueError as e:
            self.record(request, None, f"bad request: {e}")
            return detail_response(400, "invalid_output_format", str(e))
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            self.record(request, None, "bad request: no text")
            return web.json_response(
                {"detail": [{"loc": ["body", "text"], "msg": "Field required", "type": "missing"}]},
                status=422,
            )

        fault = self.schedule.decide(len(text))
        self.record(request, fault, f"{len(text)} chars")
        if fault is not None and fault.type in REFUSALS:
            return await self._refuse(request, fault, len(text))
        if fault is not None and fault.type is FaultType.IN_BAND_ERROR:
            # an error object under a 200: what a misbehaving edge or gateway returns
            return web.json_response(
                {"detail": {"status": "internal_error", "message": _in_band_message(fault)}}
            )
        if fault is not None and fault.type is FaultType.MALFORMED:
            # a 200 that is not audio at all
            return web.Response(
                text="<html><body>upstream error</body></html>", content_type="text/html"
            )

        kind = fault.type if fault is not None else None
        pcm = await asyncio.to_thread(speak, text, fmt.sample_rate, silent=kind is FaultType.SILENT)
        audio = b"" if kind is FaultType.EMPTY else await asyncio.to_thread(fmt.encode, pcm)
        self.charge(len(text))
        resp = web.StreamResponse(
            headers={
                "Content-Type": fmt.content_type,
                "x-trace-id": uuid.uuid4().hex,
                "x-character-count": str(len(text)),
            }
        )
        await resp.prepare(request)
        actor: StreamActor[bytes] = StreamActor(
            fault, send=resp.write, abort=lambda: self.reset(request), park=self.park
        )
        try:
            for piece in split(audio, fmt.chunk_bytes(self.chunk_ms)) if audio else []:
                await actor.send(piece)
            await actor.finish()
            await resp.write_eof()
        except StreamStoppedError:
            self.reset(request)
        except ConnectionError:
            pass
        return resp

    # -- WebSockets ----------------------------------------------------------------------
    async def _multi_stream_input(self, request: web.Request) -> web.StreamResponse:
        return await self._websocket(request, multi=True)

    async def _stream_input(self, request: web.Request) -> web.StreamResponse:
        return await self._websocket(request, multi=False)

    async def _websocket(self, request: web.Request, *, multi: bool) -> web.StreamResponse:
        refusal = self._auth_refusal(
            request.headers.get("xi-api-key") or request.query.get("xi-api-key")
        )
        if refusal is not None:
            self.record(request, None, f"refused {refusal.status}")
            return refusal
        try:
            fmt = OutputFormat.parse(request.query.get("output_format", "mp3_44100_128"))
            inactivity = float(request.query.get("inactivity_timeout", "20"))
        except ValueError as e:
            self.record(request, None, f"bad request: {e}")
            return detail_response(400, "invalid_request", str(e))
        faults = SocketFaults(self.schedule)
        fault = faults.at_handshake()
        self.record(request, fault, "handshake")
        quota_on_first_text = fault is not None and fault.type is FaultType.QUOTA
        if fault is not None and not quota_on_first_text:
            return await self._refuse(request, fault, 0)

        if self.connect_delay_s > 0:
            await self.park(self.connect_delay_s)
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        self._sockets.add(ws)
        socket = _Socket(
            self,
            request,
            ws,
            faults,
            fmt=fmt,
            multi=multi,
            auto_mode=request.query.get("auto_mode", "false") == "true",
            inactivity_s=min(max(inactivity, 1.0), 180.0),
        )
        if quota_on_first_text and fault is not None:
            socket.refuse_first_text = fault
        try:
            await socket.serve()
        finally:
            self._sockets.discard(ws)
        return ws


def _in_band_message(fault: Fault) -> str:
    return fault.message or "An internal error occurred while generating audio."


@dataclass
class _Context:
    id: str
    buffer: str = ""
    inputs: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    schedule: tuple[int, ...] = DEFAULT_CHUNK_LENGTH_SCHEDULE
    closing: bool = False


_SENTENCE_END = re.compile(r"[.!?;:]\s*$")


class _Socket:
    """One open stream-input / multi-stream-input socket."""

    def __init__(
        self,
        sim: ElevenLabsSimulator,
        request: web.Request,
        ws: web.WebSocketResponse,
        faults: SocketFaults,
        *,
        fmt: OutputFormat,
        multi: bool,
        auto_mode: bool,
        inactivity_s: float,
    ) -> None:
        self._sim = sim
        self._request = request
        self._ws = ws
        self._faults = faults
        self._fmt = fmt
        self._multi = multi
        self._auto_mode = auto_mode
        self._inactivity_s = inactivity_s
        self._contexts: dict[str, _Context] = {}
        self._send_lock = asyncio.Lock()
        self._route = f"WS {request.path}"
        self.refuse_first_text: Fault | None = None

    async def serve(self) -> None:
        try:
            await self._read_loop()
        finally:
            tasks = [c.task for c in self._contexts.values() if c.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_loop(self) -> None:
        while not self._ws.closed:
            try:
                msg = await self._ws.receive(timeout=self._inactivity_s)
            except TimeoutError:
                await self._ws.close(
                    code=1008,
                    message=(
                        f"Have not received a new text input within the timeout of "
                        f"{self._inactivity_s:g} seconds. Streaming input terminated."
                    ).encode()[:120],
                )
                return
            if msg.type is not WSMsgType.TEXT:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    return
                continue
            try:
                data = json.loads(msg.data)
            except json.JSONDecodeError:
                await self._ws.close(code=1007, message=b"Invalid JSON message")
                return
            if isinstance(data, dict) and not await self._on_message(data):
                return

    async def _on_message(self, data: dict[str, Any]) -> bool:
        """Handle one client message; False once the socket is being closed."""
        if data.get("close_socket"):
            await self._finish_all()
            await self._ws.close(code=1000)
            return False
        context_id = str(data.get("context_id") or "default") if self._multi else "default"
        ctx = self._contexts.get(context_id)
        if data.get("close_context"):
            if ctx is not None and not ctx.closing:
                ctx.closing = True
                self._trigger(ctx, force=True)
                ctx.inputs.put_nowait(None)
            return True
        text = data.get("text")
        if not isinstance(text, str):
            return True
        if ctx is None:
            if sum(1 for c in self._contexts.values() if not c.closing) >= MAX_CONTEXTS:
                await self._ws.close(
                    code=1008,
                    # a close reason fits in 123 bytes, so the real one is cut short too
                    message=b"Maximum simultaneous contexts per WebSocket connection exceeded "
                    b"(5). Please close an existing context first.",
                )
                return False
            ctx = _Context(context_id)
            config = data.get("generation_config")
            if isinstance(config, dict) and isinstance(config.get("chunk_length_schedule"), list):
                ctx.schedule = (
                    tuple(int(n) for n in config["chunk_length_schedule"]) or ctx.schedule
                )
            ctx.task = asyncio.create_task(self._generate(ctx))
            self._contexts[context_id] = ctx
        if ctx.closing:
            return True
        if text.strip() and self.refuse_first_text is not None:
            await self._close_for(self.refuse_first_text, len(text))
            return False
        if not self._multi and text == "":
            # the single-context socket ends its input with an empty string
            ctx.closing = True
            self._trigger(ctx, force=True)
            ctx.inputs.put_nowait(None)
            return True
        if text.strip():
            ctx.buffer += text
        self._trigger(
            ctx,
            force=bool(data.get("flush")),
            soft=bool(data.get("try_trigger_generation")),
        )
        return True

    def _trigger(self, ctx: _Context, *, force: bool = False, soft: bool = False) -> None:
        """Start generating the buffered text when ElevenLabs would."""
        buffered = ctx.buffer
        if not buffered.strip():
            return
        ready = (
            force
            or (self._auto_mode and _SENTENCE_END.search(buffered) is not None)
            or (soft and len(buffered) >= 50)
            or (len(buffered) >= ctx.schedule[0] and buffered[-1:].isspace())
        )
        if ready:
            ctx.buffer = ""
            ctx.inputs.put_nowait(buffered)

    async def _finish_all(self) -> None:
        for ctx in list(self._contexts.values()):
            if not ctx.closing:
                ctx.closing = True
                self._trigger(ctx, force=True)
                ctx.inputs.put_nowait(None)
        tasks = [c.task for c in self._contexts.values() if c.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, payload: dict[str, Any]) -> None:
        await self._send_text(json.dumps(payload))

    async def _send_text(self, text: str) -> None:
        async with self._send_lock:
            await self._ws.send_str(text)

    def _abort(self) -> None:
        self._sim.reset(self._request)

    async def _close_for(self, fault: Fault, needed: int) -> None:
        """ElevenLabs ends a socket it refuses with a policy-violation close frame."""
        if fault.type is FaultType.QUOTA:
            code, reason = 1008, fault.message or self._sim.quota_message(needed)
        elif (fault.status or 500) < 500:
            code = 1008
            reason = (
                fault.message
                or STATUS_DETAILS.get(
                    _STATUS_FOR_CODE.get(fault.status or 400, ""), (0, "Request refused")
                )[1]
            )
        else:
            code, reason = 1011, fault.message or "Internal server error"
        await self._ws.close(code=code, message=reason.encode()[:120])

    async def _generate(self, ctx: _Context) -> None:
        try:
            await self._run_context(ctx)
        except (StreamStoppedError, ConnectionError):
            pass
        except Exception:
            # a simulator bug must look like a provider error, not a silent hang
            log.exception("elevenlabs simulator failed a context", context_id=ctx.id)
            with contextlib.suppress(Exception):
                await self._ws.close(code=1011, message=b"Internal server error (simulator)")
        finally:
            if self._contexts.get(ctx.id) is ctx:
                del self._contexts[ctx.id]

    def _tag(self, payload: dict[str, Any], ctx: _Context) -> dict[str, Any]:
        if self._multi:
            payload[CONTEXT_KEY] = ctx.id
        return payload

    async def _run_context(self, ctx: _Context) -> None:
        actor: StreamActor[str] | None = None
        elapsed_ms = 0.0
        while (text := await ctx.inputs.get()) is not None:
            if actor is None:
                fault = self._faults.for_request(len(text))
                self._sim.state.log.record(self._route, fault, f"context {ctx.id}")
                if fault is not None and fault.type in (FaultType.STATUS, FaultType.QUOTA):
                    await self._close_for(fault, len(text))
                    return
                if fault is not None and fault.type is FaultType.RESET:
                    self._abort()
                    return
                actor = self._actor(ctx, fault)
            else:
                self._sim.schedule.bill(len(text))
            elapsed_ms = await self._speak(ctx, actor, text, elapsed_ms)
        if actor is not None:
            await actor.finish()
        await self._send(self._tag({"isFinal": True}, ctx))
        if not self._multi:
            await self._ws.close(code=1000)

    def _actor(self, ctx: _Context, fault: Fault | None) -> StreamActor[str]:
        message = _in_band_message(fault) if fault is not None else ""
        return StreamActor(
            fault,
            send=self._send_text,
            abort=self._abort,
            park=self._sim.park,
            in_band_error=lambda: self._send(self._tag({"error": message, "code": 1011}, ctx)),
            garbage='{"audio": "//uQx',  # a frame cut short: not JSON
        )

    async def _speak(
        self, ctx: _Context, actor: StreamActor[str], text: str, elapsed_ms: float
    ) -> float:
        kind = actor.fault.type if actor.fault is not None else None
        pcm = await asyncio.to_thread(
            speak, text, self._fmt.sample_rate, silent=kind is FaultType.SILENT
        )
        self._sim.charge(len(text))
        duration_ms = pcm.size * 1000 / self._fmt.sample_rate
        if kind is FaultType.EMPTY:
            return elapsed_ms
        audio = await asyncio.to_thread(self._fmt.encode, pcm)
        align = alignment(text, elapsed_ms, duration_ms)
        for i, piece in enumerate(split(audio, self._fmt.chunk_bytes(self._sim.chunk_ms))):
            first = i == 0
            payload: dict[str, Any] = {
                "audio": base64.b64encode(piece).decode(),
                "normalizedAlignment": align if first else None,
                "alignment": align if first else None,
            }
            await actor.send(json.dumps(self._tag(payload, ctx)))
        return elapsed_ms + duration_ms


def main() -> int:
    return run_cli(ElevenLabsSimulator, description="ElevenLabs TTS simulator")


if __name__ == "__main__":
    raise SystemExit(main())
