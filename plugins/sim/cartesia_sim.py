"""A local Cartesia TTS server: the ``/tts/websocket`` context protocol and ``POST /tts/bytes``.

It speaks the real wire protocol the LiveKit Cartesia plugin uses (``X-API-Key`` auth, the
``cartesia_version`` query / ``Cartesia-Version`` header, ``context_id`` + ``continue``
generation requests, base64 ``chunk`` frames, ``timestamps``, ``done`` and ``error`` frames)
and answers with real speech of the text, so the real plugin can be driven through every
failure by pointing its ``base_url`` here.

Faults (see :mod:`plugins.sim.faults`): the plan is consulted at each WebSocket handshake, at
the first non-blank transcript of each context, and once per ``/tts/bytes`` request; units
are characters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import uuid
import wave
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
from plugins.sim.http_common import (
    HttpSimulator,
    garbage_bytes,
    html_response,
    huge_error_response,
    run_cli,
)
from plugins.sim.tts_audio import RAW_ENCODINGS, encode_raw, speak, split, spread

log = structlog.get_logger(__name__)

#: The key a simulator treats as revoked (any other non-empty key is accepted).
REJECTED_KEY = "bad-key"
SAMPLE_RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000})
WS_ROUTE = "WS /tts/websocket"

_MESSAGES = {
    400: "Bad request",
    401: "Invalid API key",
    402: "You have run out of credits. Add credits or upgrade your plan to continue.",
    403: "This API key does not have access to this resource",
    404: "Not found",
    429: "Rate limit exceeded: too many concurrent requests for your plan",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable, please try again later",
    504: "Gateway timeout",
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """Cartesia's JSON error body for an HTTP status."""
    return {"error": message or _MESSAGES.get(status, "Request failed")}


def error_response(
    status: int, message: str | None = None, retry_after_s: float | None = None
) -> web.Response:
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = f"{retry_after_s:g}"
    return web.json_response(error_body(status, message), status=status, headers=headers)


#: Faults acted out in the body itself (not by the stream actor).
_BODY_FAULTS = frozenset({FaultType.GARBAGE, FaultType.SHORT})


def fault_status(fault: Fault) -> int:
    if fault.type is FaultType.QUOTA:
        return fault.status or 402
    return fault.status or 500


@dataclass(frozen=True)
class OutputFormat:
    container: str
    encoding: str
    sample_rate: int

    @classmethod
    def parse(cls, data: object) -> OutputFormat:
        if not isinstance(data, dict):
            raise ValueError(
                "output_format must be an object with container, encoding, sample_rate"
            )
        container = data.get("container")
        encoding = data.get("encoding")
        rate = data.get("sample_rate")
        if container not in ("raw", "wav"):
            raise ValueError(f"output_format.container {container!r} is not supported (raw, wav)")
        if encoding not in RAW_ENCODINGS:
            raise ValueError(
                f"output_format.encoding {encoding!r} is not supported; use one of "
                f"{sorted(RAW_ENCODINGS)}"
            )
        if container == "wav" and encoding != "pcm_s16le":
            raise ValueError("the wav container is served as pcm_s16le only")
        if not isinstance(rate, int) or rate not in SAMPLE_RATES:
            raise ValueError(
                f"output_format.sample_rate {rate!r} is invalid; use one of {sorted(SAMPLE_RATES)}"
            )
        return cls(container, encoding, rate)

    @property
    def bytes_per_sample(self) -> int:
        return 4 if self.encoding == "pcm_f32le" else 2


def _validate_request(body: object, *, streaming: bool) -> tuple[str, OutputFormat]:
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    for key in ("model_id", "voice", "output_format"):
        if key not in body:
            raise ValueError(f"missing required field {key!r}")
    transcript = body.get("transcript")
    if not isinstance(transcript, str):
        raise ValueError("missing required field 'transcript' (a string)")
    voice = body["voice"]
    if not isinstance(voice, dict) or voice.get("mode") not in ("id", "embedding"):
        raise ValueError("voice must be {'mode': 'id', 'id': ...} or {'mode': 'embedding', ...}")
    fmt = OutputFormat.parse(body["output_format"])
    if streaming and fmt.container != "raw":
        raise ValueError("the WebSocket only streams the raw container")
    return transcript, fmt


class CartesiaSimulator(HttpSimulator):
    """Cartesia's TTS API on 127.0.0.1; ``base_url`` is the plugin's ``base_url``."""

    name = "cartesia"

    def __init__(
        self, state: SimState | None = None, *, chunk_ms: int = 40, connect_delay_s: float = 0.0
    ) -> None:
        super().__init__(state)
        self.chunk_ms = chunk_ms
        #: added to every WebSocket handshake: a real one costs DNS + TCP + TLS + upgrade,
        #: about 100-300 ms from a cloud region to Cartesia's, which 127.0.0.1 does not
        self.connect_delay_s = connect_delay_s
        self.handshakes = 0  # WebSocket upgrades accepted
        self.handshake = asyncio.Condition()  # notified at each accepted upgrade
        self.schedule = FaultSchedule(self.state.plan)
        self._sockets: set[web.WebSocketResponse] = set()

    async def wait_handshakes(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` upgrades were accepted in all; False on timeout."""
        async with self.handshake:
            try:
                await asyncio.wait_for(
                    self.handshake.wait_for(lambda: self.handshakes >= count), timeout
                )
            except TimeoutError:
                return False
        return True

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/tts/websocket", self._websocket)
        app.router.add_post("/tts/bytes", self._bytes)
        app.router.add_get("/voices", self._voices)

    async def aclose(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
        await super().aclose()

    # -- shared --------------------------------------------------------------------------
    @staticmethod
    def _auth_refusal(key: str | None, version: str | None) -> web.Response | None:
        if not key:
            return error_response(401, "Missing API key: send it in the X-API-Key header")
        if key == REJECTED_KEY:
            return error_response(401)
        if not version:
            return error_response(400, "Missing Cartesia-Version (header or cartesia_version)")
        return None

    async def _refuse(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.type is FaultType.RESET:
            self.reset(request)
            return web.Response(status=500)
        if fault.type is FaultType.HANG:
            return await self.hang(request)
        if fault.type is FaultType.HUGE_ERROR:
            return huge_error_response(fault_status(fault), fault.message or "Request failed")
        return error_response(fault_status(fault), fault.message, fault.retry_after_s)

    # -- GET /voices (the cheapest authenticated read: what ``doctor`` uses) -----------------
    async def _voices(self, request: web.Request) -> web.Response:
        refusal = self._auth_refusal(
            request.headers.get("X-API-Key"), request.headers.get("Cartesia-Version")
        )
        self.record(request, None, f"refused {refusal.status}" if refusal else "")
        if refusal is not None:
            return refusal
        return web.json_response(
            [{"id": "794f9389-aac1-45b6-b726-9d9369183238", "name": "Sim Voice", "language": "en"}]
        )

    # -- POST /tts/bytes -----------------------------------------------------------------
    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        refusal = self._auth_refusal(
            request.headers.get("X-API-Key"), request.headers.get("Cartesia-Version")
        )
        if refusal is not None:
            self.record(request, None, f"refused {refusal.status}")
            return refusal
        try:
            transcript, fmt = _validate_request(await request.json(), streaming=False)
        except (ValueError, json.JSONDecodeError) as e:
            self.record(request, None, f"bad request: {e}")
            return error_response(400, str(e))

        fault = self.schedule.decide(len(transcript))
        self.record(request, fault, f"{len(transcript)} chars")
        if fault is not None and fault.type in REFUSALS:
            return await self._refuse(request, fault)
        if fault is not None and fault.type is FaultType.IN_BAND_ERROR:
            return web.json_response(error_body(fault.status or 500, fault.message))
        if fault is not None and fault.type is FaultType.HTML:
            return html_response(200)

        silent = fault is not None and fault.type is FaultType.SILENT
        pcm = await asyncio.to_thread(speak, transcript, fmt.sample_rate, silent=silent)
        audio = b"" if fault is not None and fault.type is FaultType.EMPTY else None
        if audio is None:
            audio = encode_raw(pcm, fmt.encoding)
            if fault is not None and fault.type is FaultType.GARBAGE:
                audio = garbage_bytes(len(audio))
            elif fault is not None and fault.type is FaultType.SHORT:
                audio = audio[: len(audio) // 5 // fmt.bytes_per_sample * fmt.bytes_per_sample]
            if fmt.container == "wav":
                audio = _wav(audio, fmt)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        actor: StreamActor[bytes] = StreamActor(
            None if fault is not None and fault.type in _BODY_FAULTS else fault,
            send=resp.write,
            abort=lambda: self.reset(request),
            park=self.park,
            garbage=b"\x7f",  # one stray byte: every later sample is misaligned
        )
        try:
            for piece in split(audio, self.chunk_bytes(fmt)) if audio else []:
                await actor.send(piece)
            await actor.finish()
            await resp.write_eof()
        except StreamStoppedError:
            self.reset(request)
        except ConnectionError:
            pass
        return resp

    def chunk_bytes(self, fmt: OutputFormat) -> int:
        """Bytes of one audio chunk (``chunk_ms`` of audio)."""
        return max(1, fmt.sample_rate * self.chunk_ms // 1000) * fmt.bytes_per_sample

    # -- GET /tts/websocket --------------------------------------------------------------
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        refusal = self._auth_refusal(
            request.headers.get("X-API-Key") or request.query.get("api_key"),
            request.query.get("cartesia_version") or request.headers.get("Cartesia-Version"),
        )
        if refusal is not None:
            self.record(request, None, f"refused {refusal.status}")
            return refusal
        faults = SocketFaults(self.schedule)
        fault = faults.at_handshake()
        self.record(request, fault, "handshake")
        if fault is not None:
            return await self._refuse(request, fault)

        if self.connect_delay_s > 0:
            await self.park(self.connect_delay_s)
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        self._sockets.add(ws)
        async with self.handshake:
            self.handshakes += 1
            self.handshake.notify_all()
        try:
            await _Socket(self, request, ws, faults).serve()
        finally:
            self._sockets.discard(ws)
        return ws


@dataclass
class _Context:
    id: str
    fmt: OutputFormat
    timestamps: bool
    inputs: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class _Socket:
    """One open ``/tts/websocket`` connection: contexts in, chunks out."""

    def __init__(
        self,
        sim: CartesiaSimulator,
        request: web.Request,
        ws: web.WebSocketResponse,
        faults: SocketFaults,
    ) -> None:
        self._sim = sim
        self._request = request
        self._ws = ws
        self._faults = faults
        self._contexts: dict[str, _Context] = {}
        self._send_lock = asyncio.Lock()

    async def serve(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                await self._on_message(msg.data)
        finally:
            tasks = [c.task for c in self._contexts.values() if c.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_message(self, raw: str) -> None:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            await self._error(None, 400, "Invalid JSON message")
            return
        if not isinstance(data, dict):
            await self._error(None, 400, "Each message must be a JSON object")
            return
        context_id = str(data.get("context_id") or uuid.uuid4())
        if data.get("cancel"):
            ctx = self._contexts.pop(context_id, None)
            if ctx is not None and ctx.task is not None:
                ctx.task.cancel()
            return
        try:
            transcript, fmt = _validate_request(data, streaming=True)
        except ValueError as e:
            await self._error(context_id, 400, str(e))
            return
        ctx = self._contexts.get(context_id)
        if ctx is None:
            ctx = _Context(context_id, fmt, bool(data.get("add_timestamps")))
            ctx.task = asyncio.create_task(self._generate(ctx))
            self._contexts[context_id] = ctx
        ctx.inputs.put_nowait(transcript)
        if not data.get("continue", False):
            ctx.inputs.put_nowait(None)

    async def _send(self, payload: dict[str, Any]) -> None:
        await self._send_text(json.dumps(payload))

    async def _send_text(self, text: str) -> None:
        async with self._send_lock:
            await self._ws.send_str(text)

    async def _error(self, context_id: str | None, status: int, message: str) -> None:
        payload: dict[str, Any] = {
            "type": "error",
            "status_code": status,
            "done": True,
            "error": message,
        }
        if context_id is not None:
            payload["context_id"] = context_id
        await self._send(payload)

    def _abort(self) -> None:
        self._sim.reset(self._request)

    async def _generate(self, ctx: _Context) -> None:
        try:
            await self._run_context(ctx)
        except (StreamStoppedError, ConnectionError):
            pass
        except Exception:
            # a simulator bug must look like a provider error, not a silent hang
            log.exception("cartesia simulator failed a context", context_id=ctx.id)
            with contextlib.suppress(Exception):
                await self._error(ctx.id, 500, "Internal server error (simulator)")
        finally:
            if self._contexts.get(ctx.id) is ctx:
                del self._contexts[ctx.id]

    async def _run_context(self, ctx: _Context) -> None:
        actor: StreamActor[str] | None = None
        elapsed = 0.0
        while (text := await ctx.inputs.get()) is not None:
            if not text.strip():
                continue
            if actor is None:
                fault = self._faults.for_request(len(text))
                self._sim.state.log.record(WS_ROUTE, fault, f"context {ctx.id}")
                if fault is not None and fault.type in (FaultType.STATUS, FaultType.QUOTA):
                    await self._error(ctx.id, fault_status(fault), _message(fault))
                    return
                if fault is not None and fault.type is FaultType.RESET:
                    self._abort()
                    return
                actor = self._actor(ctx, fault)
            else:
                self._sim.schedule.bill(len(text))
            elapsed = await self._speak(ctx, actor, text, elapsed)
        if actor is None:  # a context with no text at all still completes
            actor = self._actor(ctx, None)
        await actor.finish()
        await self._send({"type": "done", "done": True, "status_code": 206, "context_id": ctx.id})

    def _actor(self, ctx: _Context, fault: Fault | None) -> StreamActor[str]:
        status = fault.status if fault is not None and fault.status else 500
        message = _message(fault) if fault is not None else ""
        return StreamActor(
            fault,
            send=self._send_text,
            abort=self._abort,
            park=self._sim.park,
            in_band_error=lambda: self._error(ctx.id, status, message),
            garbage='{"type": "chunk", "data": "',  # a frame cut short: not JSON
        )

    async def _speak(
        self, ctx: _Context, actor: StreamActor[str], text: str, elapsed: float
    ) -> float:
        fault = actor.fault
        kind = fault.type if fault is not None else None
        pcm = await asyncio.to_thread(
            speak, text, ctx.fmt.sample_rate, silent=kind is FaultType.SILENT
        )
        duration = pcm.size / ctx.fmt.sample_rate
        if kind is FaultType.EMPTY:
            return elapsed
        audio = encode_raw(pcm, ctx.fmt.encoding)
        for piece in split(audio, self._sim.chunk_bytes(ctx.fmt)):
            await actor.send(
                json.dumps(
                    {
                        "type": "chunk",
                        "data": base64.b64encode(piece).decode(),
                        "done": False,
                        "status_code": 206,
                        "step_time": round(self._sim.chunk_ms * 0.3, 1),
                        "context_id": ctx.id,
                    }
                )
            )
        if ctx.timestamps:
            words = text.split()
            spans = spread([len(w) for w in words], duration)
            await self._send(
                {
                    "type": "timestamps",
                    "done": False,
                    "status_code": 206,
                    "context_id": ctx.id,
                    "word_timestamps": {
                        "words": words,
                        "start": [round(elapsed + s, 3) for s, _ in spans],
                        "end": [round(elapsed + e, 3) for _, e in spans],
                    },
                }
            )
        return elapsed + duration


def _message(fault: Fault) -> str:
    if fault.message:
        return fault.message
    if fault.type is FaultType.IN_BAND_ERROR:
        return "Internal server error: generation failed, please retry"
    return _MESSAGES.get(fault_status(fault), "Request failed")


def _wav(raw: bytes, fmt: OutputFormat) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(fmt.sample_rate)
        w.writeframes(raw)
    return buf.getvalue()


def main() -> int:
    return run_cli(CartesiaSimulator, description="Cartesia TTS simulator")


if __name__ == "__main__":
    raise SystemExit(main())
