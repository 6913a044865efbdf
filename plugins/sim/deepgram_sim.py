"""A local Deepgram speech-to-text server: live ``/v1/listen`` WebSocket and prerecorded POST.

It speaks the protocol the LiveKit Deepgram plugin uses (``Authorization: Token`` auth, the
query options, binary linear16 audio, ``KeepAlive`` / ``Finalize`` / ``CloseStream``, and
``Results`` / ``SpeechStarted`` / ``UtteranceEnd`` / ``Metadata`` replies) and transcribes
the words actually spoken in the audio it receives: an energy endpointer cuts utterances and
PocketSphinx transcribes them off the event loop.

Faults (see :mod:`plugins.sim.faults`): the plan is consulted at each handshake, at the start
of each utterance on an open socket, and once per prerecorded request; units are seconds of
audio received (Deepgram bills the audio streamed, speech or not).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import uuid
import wave
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from aiohttp import WSMsgType, web

from plugins.local.audio import rms_dbfs
from plugins.local.sphinx_stt import SphinxEngine
from plugins.sim.fault_schedule import (
    REFUSALS,
    FaultSchedule,
    SocketFaults,
    StreamActor,
    StreamStoppedError,
)
from plugins.sim.faults import Fault, FaultType, SimState
from plugins.sim.http_common import HttpSimulator, run_cli
from plugins.sim.streaming_asr import INTERIM_EVERY_S, PartialDecoder, ScriptedDecoder
from plugins.sim.tts_audio import spread

log = structlog.get_logger(__name__)

Pcm = npt.NDArray[np.int16]

#: The key a simulator treats as revoked (any other non-empty key is accepted).
REJECTED_KEY = "bad-key"
WS_ROUTE = "WS /v1/listen"
#: PocketSphinx gives no calibrated confidence; the simulator reports this for every word.
WORD_CONFIDENCE = 0.9
#: Deepgram closes a socket that receives neither audio nor a message for this long.
IDLE_TIMEOUT_S = 10.0

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Bad Request", "Bad Request: failed to process audio: corrupt or unsupported data"),
    401: ("INVALID_AUTH", "Invalid credentials."),
    402: ("ASR_PAYMENT_REQUIRED", "Project does not have enough credits for an API request."),
    403: ("INSUFFICIENT_PERMISSIONS", "Project does not have access to the requested model."),
    429: ("TOO_MANY_REQUESTS", "Too many requests. Please try again later"),
    500: ("INTERNAL_SERVER_ERROR", "Internal server error. Please retry your request."),
    502: ("BAD_GATEWAY", "Bad gateway. Please retry your request."),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable. Please retry your request."),
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """Deepgram's JSON error body for an HTTP status."""
    code, default = _ERRORS.get(status, ("REQUEST_FAILED", "Request failed."))
    return {"err_code": code, "err_msg": message or default, "request_id": str(uuid.uuid4())}


def error_response(
    status: int, message: str | None = None, retry_after_s: float | None = None
) -> web.Response:
    body = error_body(status, message)
    headers = {"dg-error": body["err_msg"], "dg-request-id": body["request_id"]}
    if retry_after_s is not None:
        headers["Retry-After"] = f"{retry_after_s:g}"
    return web.json_response(body, status=status, headers=headers)


def fault_status(fault: Fault) -> int:
    if fault.type is FaultType.QUOTA:
        return fault.status or 402
    return fault.status or 500


def _flag(query: dict[str, str], name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default
    return value.lower() == "true"


@dataclass(frozen=True)
class ListenOptions:
    """The query options that change what the simulator sends back."""

    sample_rate: int
    channels: int
    interim_results: bool
    punctuate: bool
    vad_events: bool
    endpointing_ms: int | None  # None: endpointing disabled
    utterance_end_ms: int | None
    model: str
    language: str
    detect_language: bool

    @classmethod
    def parse(cls, query: dict[str, str], *, streaming: bool) -> ListenOptions:
        encoding = query.get("encoding")
        if streaming and encoding not in (None, "linear16"):
            raise ValueError(f"encoding {encoding!r} is not supported here; send linear16")
        try:
            rate = int(query.get("sample_rate", "16000"))
            channels = int(query.get("channels", "1"))
        except ValueError as e:
            raise ValueError(f"sample_rate and channels must be integers ({e})") from None
        if streaming and encoding is None:
            raise ValueError("raw audio needs encoding=linear16 and sample_rate")
        if not 8000 <= rate <= 96000 or not 1 <= channels <= 8:
            raise ValueError(f"unsupported sample_rate={rate} / channels={channels}")
        endpointing = query.get("endpointing", "10")
        utterance_end = query.get("utterance_end_ms")
        return cls(
            sample_rate=rate,
            channels=channels,
            interim_results=_flag(query, "interim_results", False),
            punctuate=_flag(query, "punctuate", False) or _flag(query, "smart_format", False),
            vad_events=_flag(query, "vad_events", False),
            endpointing_ms=None if endpointing.lower() == "false" else int(endpointing),
            utterance_end_ms=int(utterance_end) if utterance_end else None,
            model=query.get("model", "nova-3"),
            language=query.get("language", "en"),
            detect_language=_flag(query, "detect_language", False),
        )


# -- utterances ------------------------------------------------------------------------------


@dataclass
class Utterance:
    """One stretch of speech: its audio (with a little lead-in) and where it sits in time."""

    start: float  # stream time of the first kept sample
    voiced_start: float
    voiced_end: float
    frames: list[Pcm] = field(default_factory=list)
    end: float = 0.0

    def pcm(self) -> Pcm:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, dtype=np.int16)


@dataclass(frozen=True)
class SpeechBegan:
    at: float


@dataclass(frozen=True)
class SpeechEnded:
    utterance: Utterance
    endpoint: bool  # ended by the caller's silence (speech_final), not forced


class EnergyEndpointer:
    """Cuts a mono int16 stream into utterances by loudness and trailing silence.

    ``hangover_s`` of silence ends an utterance. Deepgram's own endpointing (25 ms in the
    LiveKit plugin) relies on a neural model; an energy detector would split words at every
    short pause, so callers pass a floor of a few hundred milliseconds.
    """

    FRAME_S = 0.02
    VOICE_FLOOR_DBFS = -45.0
    OVER_NOISE_DB = 10.0

    def __init__(
        self,
        sample_rate: int,
        *,
        hangover_s: float,
        preroll_s: float = 0.2,
        max_utterance_s: float = 15.0,
        start_frames: int = 3,
    ) -> None:
        self.sample_rate = sample_rate
        self.hangover_s = hangover_s
        self.max_utterance_s = max_utterance_s
        self.time = 0.0
        self._frame = max(1, round(sample_rate * self.FRAME_S))
        self._residual = np.zeros(0, dtype=np.int16)
        self._preroll: deque[Pcm] = deque(maxlen=max(1, round(preroll_s / self.FRAME_S)))
        self._start_frames = start_frames
        self._run = 0
        self._run_start = 0.0
        self._silence = 0.0
        self._noise_db = -70.0
        self._utt: Utterance | None = None

    @property
    def current(self) -> Utterance | None:
        return self._utt

    def feed(self, pcm: Pcm) -> list[SpeechBegan | SpeechEnded]:
        data = np.concatenate([self._residual, pcm]) if self._residual.size else pcm
        events: list[SpeechBegan | SpeechEnded] = []
        whole = data.size - data.size % self._frame
        for i in range(0, whole, self._frame):
            self._step(data[i : i + self._frame], events)
        self._residual = data[whole:].copy()
        return events

    def finish(self) -> Utterance | None:
        """End the utterance in progress now (Finalize / CloseStream)."""
        utt, self._utt = self._utt, None
        self._run = 0
        if utt is not None:
            utt.end = self.time
        return utt

    def _step(self, frame: Pcm, events: list[SpeechBegan | SpeechEnded]) -> None:
        db = rms_dbfs(frame)
        t0 = self.time
        self.time += self.FRAME_S
        voiced = db > max(self.VOICE_FLOOR_DBFS, self._noise_db + self.OVER_NOISE_DB)
        utt = self._utt
        if utt is None:
            if not voiced:
                self._noise_db = 0.95 * self._noise_db + 0.05 * max(db, -90.0)
            self._preroll.append(frame)
            if not voiced:
                self._run = 0
                return
            if self._run == 0:
                self._run_start = t0
            self._run += 1
            if self._run < self._start_frames:
                return
            kept = list(self._preroll)
            self._utt = Utterance(
                start=self.time - len(kept) * self.FRAME_S,
                voiced_start=self._run_start,
                voiced_end=self.time,
                frames=kept,
            )
            self._preroll.clear()
            self._silence = 0.0
            events.append(SpeechBegan(self._run_start))
            return
        utt.frames.append(frame)
        if voiced:
            utt.voiced_end = self.time
            self._silence = 0.0
        else:
            self._silence += self.FRAME_S
        endpoint = self._silence >= self.hangover_s
        if endpoint or self.time - utt.start >= self.max_utterance_s:
            utt.end = self.time
            self._utt = None
            self._run = 0
            events.append(SpeechEnded(utt, endpoint=endpoint))


def transcribe(pcm: Pcm, sample_rate: int) -> str:
    """The words PocketSphinx hears (blocking; run it in a thread)."""
    if pcm.size == 0:
        return ""
    return SphinxEngine.shared().transcribe(np.ascontiguousarray(pcm), sample_rate)


def alternative(
    text: str, voiced: tuple[float, float], *, punctuate: bool, confidence: float
) -> dict[str, Any]:
    """One ``channel.alternatives[]`` entry: transcript and per-word timings."""
    words = text.split()
    spans = spread([len(w) for w in words], max(0.0, voiced[1] - voiced[0]))
    shown = list(words)
    if punctuate and shown:
        shown[0] = shown[0][:1].upper() + shown[0][1:]
        shown[-1] = shown[-1] + "."
    entries: list[dict[str, Any]] = []
    for word, pword, (s, e) in zip(words, shown, spans, strict=True):
        entry: dict[str, Any] = {
            "word": word,
            "start": round(voiced[0] + s, 3),
            "end": round(voiced[0] + e, 3),
            "confidence": confidence,
        }
        if punctuate:
            entry["punctuated_word"] = pword
        entries.append(entry)
    return {
        "transcript": " ".join(shown),
        "confidence": confidence if words else 0.0,
        "words": entries,
    }


def _model_info(model: str) -> dict[str, Any]:
    return {"name": f"general-{model}", "version": "2025-01-01.0", "arch": model}


# -- the simulator ---------------------------------------------------------------------------


class DeepgramSimulator(HttpSimulator):
    """Deepgram's ``/v1/listen`` on 127.0.0.1; ``base_url`` is the plugin's ``base_url``.

    ``min_endpoint_s`` is the least trailing silence that ends an utterance (see
    :class:`EnergyEndpointer`); ``interim_every_s`` how often interim results are sent while
    someone speaks. ``script``: every utterance is heard as this text instead of being
    recognised (a load test: see :class:`~plugins.sim.streaming_asr.ScriptedDecoder`).
    """

    name = "deepgram"
    base_path = "/v1/listen"

    def __init__(
        self,
        state: SimState | None = None,
        *,
        min_endpoint_s: float = 0.5,
        interim_every_s: float = INTERIM_EVERY_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        script: str | None = None,
    ) -> None:
        super().__init__(state)
        self.script = script
        self.min_endpoint_s = min_endpoint_s
        self.interim_every_s = interim_every_s
        self.idle_timeout_s = idle_timeout_s
        self.schedule = FaultSchedule(self.state.plan)
        self._sockets: set[web.WebSocketResponse] = set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/listen", self._listen_live)
        app.router.add_post("/v1/listen", self._listen_prerecorded)
        app.router.add_get("/v1/projects", self._projects)

    async def aclose(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
        await super().aclose()

    @staticmethod
    def _auth_refusal(request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if not key and "token" in request.headers.get("Sec-WebSocket-Protocol", ""):
            # browsers authenticate with the "token, KEY" subprotocol
            parts = [p.strip() for p in request.headers["Sec-WebSocket-Protocol"].split(",")]
            key, scheme = (parts[1] if len(parts) > 1 else ""), "Token"
        if scheme not in ("Token", "Bearer") or not key.strip():
            return error_response(401, "Missing credentials: send 'Authorization: Token KEY'")
        if key.strip() == REJECTED_KEY:
            return error_response(401)
        return None

    async def _projects(self, request: web.Request) -> web.Response:
        """The account read ``doctor`` uses to check a key."""
        refusal = self._auth_refusal(request)
        self.record(request, None, f"refused {refusal.status}" if refusal else "")
        if refusal is not None:
            return refusal
        return web.json_response({"projects": [{"project_id": "sim-project", "name": "Sim"}]})

    async def _refuse(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.type is FaultType.RESET:
            self.reset(request)
            return web.Response(status=500)
        if fault.type is FaultType.HANG:
            return await self.hang(request)
        return error_response(fault_status(fault), fault.message, fault.retry_after_s)

    # -- POST /v1/listen -----------------------------------------------------------------
    async def _listen_prerecorded(self, request: web.Request) -> web.StreamResponse:
        refusal = self._auth_refusal(request)
        if refusal is not None:
            self.record(request, None, f"refused {refusal.status}")
            return refusal
        try:
            opts = ListenOptions.parse(dict(request.query), streaming=False)
            pcm, rate = _decode_body(await request.read(), request.content_type, opts)
        except ValueError as e:
            self.record(request, None, f"bad request: {e}")
            return error_response(400, str(e))
        duration = pcm.size / rate
        fault = self.schedule.decide(duration)
        self.record(request, fault, f"{duration:.2f}s of audio")
        if fault is not None and fault.type in REFUSALS:
            return await self._refuse(request, fault)
        if fault is not None and fault.type is FaultType.IN_BAND_ERROR:
            return web.json_response(error_body(fault.status or 500, fault.message))
        if fault is not None and fault.type is FaultType.SLOW_FIRST:
            await self.park(fault.delay_s)

        empty = fault is not None and fault.type in (FaultType.EMPTY, FaultType.SILENT)
        if empty:
            text = ""
        elif self.script is not None:
            text = self.script
        else:
            text = await asyncio.to_thread(transcribe, pcm, rate)
        request_id = str(uuid.uuid4())
        channel: dict[str, Any] = {
            "alternatives": [
                alternative(
                    text, (0.0, duration), punctuate=opts.punctuate, confidence=WORD_CONFIDENCE
                )
            ]
        }
        if opts.detect_language:
            channel["detected_language"] = "en"
            channel["language_confidence"] = WORD_CONFIDENCE
        model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, opts.model))
        body = json.dumps(
            {
                "metadata": {
                    "transaction_key": "deprecated",
                    "request_id": request_id,
                    "sha256": "",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                    "duration": round(duration, 3),
                    "channels": 1,
                    "models": [model_uuid],
                    "model_info": {model_uuid: _model_info(opts.model)},
                },
                "results": {"channels": [channel]},
            }
        ).encode()
        if fault is not None and fault.type is FaultType.MALFORMED:
            body = body[: len(body) // 2]
        resp = web.StreamResponse(
            headers={"Content-Type": "application/json", "dg-request-id": request_id}
        )
        await resp.prepare(request)
        actor: StreamActor[bytes] = StreamActor(
            fault if fault is not None and fault.type in (FaultType.CUT, FaultType.STALL) else None,
            send=resp.write,
            abort=lambda: self.reset(request),
            park=self.park,
        )
        half = len(body) // 2
        try:
            for piece in (body[:half], body[half:]):
                await actor.send(piece)
            await actor.finish()
            await resp.write_eof()
        except StreamStoppedError:
            self.reset(request)
        except ConnectionError:
            pass
        return resp

    # -- GET /v1/listen (WebSocket) ------------------------------------------------------
    async def _listen_live(self, request: web.Request) -> web.StreamResponse:
        refusal = self._auth_refusal(request)
        if refusal is not None:
            self.record(request, None, f"refused {refusal.status}")
            return refusal
        try:
            opts = ListenOptions.parse(dict(request.query), streaming=True)
        except ValueError as e:
            self.record(request, None, f"bad request: {e}")
            return error_response(400, str(e))
        faults = SocketFaults(self.schedule)
        fault = faults.at_handshake()
        self.record(request, fault, "handshake")
        if fault is not None:
            return await self._refuse(request, fault)

        request_id = str(uuid.uuid4())
        ws = web.WebSocketResponse(timeout=1.0, protocols=("token",))
        ws.headers["dg-request-id"] = request_id
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await _LiveSocket(self, request, ws, faults, opts, request_id).serve()
        finally:
            self._sockets.discard(ws)
        return ws


def _decode_body(data: bytes, content_type: str, opts: ListenOptions) -> tuple[Pcm, int]:
    """Mono int16 samples and their rate from a WAV body or raw linear16."""
    if not data:
        raise ValueError("empty request body: send the audio as the body")
    if data[:4] == b"RIFF":
        try:
            with wave.open(io.BytesIO(data)) as w:
                if w.getsampwidth() != 2:
                    raise ValueError("only 16-bit WAV is supported by the simulator")
                rate, channels = w.getframerate(), w.getnchannels()
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        except wave.Error as e:
            raise ValueError(f"corrupt WAV body ({e})") from None
    elif content_type in ("audio/wav", "audio/wave", "audio/x-wav"):
        raise ValueError("body is not a RIFF/WAV file")
    else:
        rate, channels = opts.sample_rate, opts.channels
        pcm = np.frombuffer(data[: len(data) - len(data) % 2], dtype="<i2")
    mono = pcm.reshape(-1, channels)[:, 0] if channels > 1 else pcm
    return mono.astype(np.int16), rate


@dataclass(frozen=True)
class _Job:
    kind: str  # "start" | "interim" | "final" | "finalize_empty" | "close"
    at: float = 0.0  # "start": when speech began
    utterance: Utterance | None = None
    pcm: Pcm | None = None
    endpoint: bool = False
    from_finalize: bool = False


class _LiveSocket:
    """One live transcription socket: audio in, an ordered queue of replies out."""

    def __init__(
        self,
        sim: DeepgramSimulator,
        request: web.Request,
        ws: web.WebSocketResponse,
        faults: SocketFaults,
        opts: ListenOptions,
        request_id: str,
    ) -> None:
        self._sim = sim
        self._request = request
        self._ws = ws
        self._faults = faults
        self._opts = opts
        self._request_id = request_id
        hangover = max(sim.min_endpoint_s, (opts.endpointing_ms or 0) / 1000)
        self._endpointer = EnergyEndpointer(opts.sample_rate, hangover_s=hangover)
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._last_interim = 0.0
        self._interim_queued = False  # one interim waits at most: they are snapshots
        self._partial: PartialDecoder | ScriptedDecoder | None = None
        self._partial_of: Utterance | None = None
        self._actor: StreamActor[str] | None = None
        self._send_lock = asyncio.Lock()
        self._model = _model_info(opts.model)

    async def serve(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            await self._read_loop()
            if not sender.done():
                await sender  # CloseStream: let the last replies out
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await self._drop_partial()

    # -- input ---------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        while True:
            try:
                msg = await self._ws.receive(timeout=self._sim.idle_timeout_s)
            except TimeoutError:
                await self._ws.close(
                    code=1011,
                    message=b"NET-0001: Deepgram did not receive audio data or a text message "
                    b"within the timeout window.",
                )
                return
            if msg.type is WSMsgType.BINARY:
                self._on_audio(msg.data)
            elif msg.type is WSMsgType.TEXT:
                if self._on_control(msg.data):
                    return
            else:  # close, closing, closed, error
                return

    def _on_audio(self, data: bytes) -> None:
        usable = len(data) - len(data) % (2 * self._opts.channels)
        pcm = np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
        if self._opts.channels > 1:
            pcm = pcm.reshape(-1, self._opts.channels)[:, 0].copy()
        self._sim.schedule.bill(pcm.size / self._opts.sample_rate)
        for event in self._endpointer.feed(pcm):
            if isinstance(event, SpeechBegan):
                self._jobs.put_nowait(_Job("start", at=event.at))
                self._last_interim = event.at
            else:
                self._jobs.put_nowait(
                    _Job("final", utterance=event.utterance, endpoint=event.endpoint)
                )
        current = self._endpointer.current
        if (
            current is not None
            and self._endpointer.time - self._last_interim >= self._sim.interim_every_s
            and not self._interim_queued
        ):
            # decode as the audio comes (sent as an interim result when asked for), paced
            # like Deepgram's interims: about one per second of speech
            self._last_interim = self._endpointer.time
            self._interim_queued = True
            self._jobs.put_nowait(_Job("interim", utterance=current, pcm=current.pcm()))

    def _on_control(self, raw: str) -> bool:
        """Handle a text message; True when the client asked to close the stream."""
        try:
            kind = json.loads(raw).get("type")
        except (json.JSONDecodeError, AttributeError):
            kind = None
        if kind == "KeepAlive":
            return False
        if kind in ("Finalize", "CloseStream"):
            utt = self._endpointer.finish()
            if utt is not None:
                self._jobs.put_nowait(_Job("final", utterance=utt, from_finalize=True))
            elif kind == "Finalize":
                self._jobs.put_nowait(_Job("finalize_empty"))
            if kind == "CloseStream":
                self._jobs.put_nowait(_Job("close"))
                return True
            return False
        log.debug("deepgram sim: ignoring unknown control message", kind=kind)
        return False

    # -- output --------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        try:
            while True:
                job = await self._jobs.get()
                if job.kind == "interim":
                    self._interim_queued = False
                if not await self._handle(job):
                    return
        except (StreamStoppedError, ConnectionError):
            return
        except Exception:
            # a simulator bug must look like a provider error, not a silent hang
            log.exception("deepgram simulator failed a reply")
            with contextlib.suppress(Exception):
                await self._ws.close(code=1011, message=b"NET-0000: internal error (simulator)")

    async def _handle(self, job: _Job) -> bool:
        """Send the replies for one job; False once the socket is finished."""
        if job.kind == "start":
            return await self._start_utterance(job.at)
        if job.kind == "interim" and job.utterance is not None and job.pcm is not None:
            if self._actor is not None:
                if self._opts.interim_results:
                    await self._actor.fire_if_due()
                text = await self._transcript(job.utterance, job.pcm, final=False)
                if self._opts.interim_results:
                    await self._actor.send(self._results(job.utterance, text, is_final=False))
            return True
        if job.kind == "final" and job.utterance is not None:
            utt = job.utterance
            actor = self._actor or self._plain_actor()
            await actor.finish()
            text = await self._transcript(utt, utt.pcm(), final=True)
            await actor.send(
                self._results(
                    utt,
                    text,
                    is_final=True,
                    speech_final=job.endpoint and self._opts.endpointing_ms is not None,
                    from_finalize=job.from_finalize,
                )
            )
            if self._opts.utterance_end_ms is not None:
                await actor.send(
                    json.dumps(
                        {
                            "type": "UtteranceEnd",
                            "channel": [0, 1],
                            "last_word_end": round(utt.voiced_end, 3),
                        }
                    )
                )
            self._actor = None
            return True
        if job.kind == "finalize_empty":
            now = self._endpointer.time
            empty = Utterance(start=now, voiced_start=now, voiced_end=now, end=now)
            await self._send_text(self._results(empty, "", is_final=True, from_finalize=True))
            return True
        if job.kind == "close":
            await self._send_text(json.dumps(self._metadata()))
            await self._ws.close(code=1000)
            return False
        return True

    async def _start_utterance(self, at: float) -> bool:
        fault = self._faults.for_request(0.0)
        self._sim.state.log.record(WS_ROUTE, fault, f"utterance at {at:.2f}s")
        if fault is not None and fault.type is FaultType.RESET:
            self._sim.reset(self._request)
            return False
        if fault is not None and fault.type in (FaultType.STATUS, FaultType.QUOTA):
            await self._close_with(fault)
            return False
        self._actor = StreamActor(
            fault,
            send=self._send_text,
            abort=lambda: self._sim.reset(self._request),
            park=self._sim.park,
            in_band_error=lambda: self._close_with(fault),
            garbage='{"type": "Results", "channel_index": [0, 1], "dur',
        )
        if self._opts.vad_events:
            await self._actor.send(
                json.dumps(
                    {
                        "type": "SpeechStarted",
                        "channel": [0, 1],
                        "timestamp": round(at, 3),
                    }
                )
            )
        return True

    def _plain_actor(self) -> StreamActor[str]:
        return StreamActor(None, send=self._send_text, abort=lambda: None, park=self._sim.park)

    async def _close_with(self, fault: Fault | None) -> None:
        """Deepgram reports errors on an open socket as a close frame with a reason."""
        if fault is not None and fault.type is FaultType.QUOTA:
            code, reason = 1008, fault.message or _ERRORS[402][1]
        elif fault is not None and fault.type is FaultType.STATUS and (fault.status or 500) < 500:
            status = fault.status or 400
            code, reason = 1008, fault.message or _ERRORS.get(status, ("", "Request refused"))[1]
        else:
            code = 1011
            reason = (fault.message if fault else None) or (
                "NET-0000: The service encountered an internal error."
            )
        await self._ws.close(code=code, message=reason.encode()[:120])
        raise StreamStoppedError(f"closed with {code}")

    async def _transcript(self, utt: Utterance, pcm: Pcm, *, final: bool) -> str:
        """The hypothesis for ``utt`` so far (or its final): only audio not yet heard is decoded."""
        fault = self._actor.fault if self._actor is not None else None
        if self._partial_of is not utt:
            await self._drop_partial()
            self._partial, self._partial_of = self._decoder(), utt
        partial = self._partial
        assert partial is not None
        if final:
            self._partial = self._partial_of = None
        if fault is not None and fault.type in (FaultType.EMPTY, FaultType.SILENT):
            await asyncio.to_thread(partial.close)
            return ""
        return await asyncio.to_thread(partial.finish if final else partial.advance, pcm)

    def _decoder(self) -> PartialDecoder | ScriptedDecoder:
        if self._sim.script is not None:
            return ScriptedDecoder(self._sim.script, self._opts.sample_rate)
        return PartialDecoder(self._opts.sample_rate)

    async def _drop_partial(self) -> None:
        partial, self._partial, self._partial_of = self._partial, None, None
        if partial is not None:
            await asyncio.to_thread(partial.close)

    async def _send_text(self, text: str) -> None:
        async with self._send_lock:
            await self._ws.send_str(text)

    def _results(
        self,
        utt: Utterance,
        text: str,
        *,
        is_final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> str:
        end = utt.end or self._endpointer.time
        return json.dumps(
            {
                "type": "Results",
                "channel_index": [0, 1],
                "duration": round(end - utt.start, 3),
                "start": round(utt.start, 3),
                "is_final": is_final,
                "speech_final": speech_final,
                "from_finalize": from_finalize,
                "channel": {
                    "alternatives": [
                        alternative(
                            text,
                            (utt.voiced_start, utt.voiced_end),
                            punctuate=self._opts.punctuate,
                            confidence=WORD_CONFIDENCE,
                        )
                    ]
                },
                "metadata": {
                    "request_id": self._request_id,
                    "model_info": self._model,
                    "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, self._opts.model)),
                },
            }
        )

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self._request_id,
            "sha256": "",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "duration": round(self._endpointer.time, 3),
            "channels": self._opts.channels,
        }


def main() -> int:
    return run_cli(DeepgramSimulator, description="Deepgram speech-to-text simulator")


if __name__ == "__main__":
    raise SystemExit(main())
