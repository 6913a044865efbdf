"""A local Google Cloud Speech-to-Text (gRPC ``StreamingRecognize`` / ``Recognize``, v1 and v2).

The LiveKit Google STT plugin cannot be pointed at a local endpoint through its options: it
builds ``SpeechAsyncClient`` itself, with ``api_endpoint`` hard-wired to
``speech.googleapis.com`` (``{location}-speech.googleapis.com`` for a regional location) over
TLS with Google credentials. The narrowest boundary to fake is therefore the gRPC channel: this
module serves Google's real ``google.cloud.speech.v{1,2}.Speech`` service on a plaintext
127.0.0.1 port, and :class:`SimulatedGoogleSTT` is the real plugin with one override, the
method that builds the client, so the real client library, request building, streaming and
error mapping all run unchanged over a real channel.

Audio is segmented by energy (speech starts after 60 ms above the threshold, ends after
``end_silence_s`` below it) and each utterance is transcribed with PocketSphinx; results are
``is_final=false`` interim results about once a second of speech when the request asks for
them (the plugin's default, as Google's), and finals with word offsets spread over the
utterance when asked for. Control
routes (``/_sim/faults``, ``/_sim/attempts``) are served over HTTP on :attr:`origin`; the gRPC
target for clients is :attr:`grpc_target`. Faults are taken once per stream at its start
(units: audio seconds, billed lazily as audio arrives); gRPC has no HTTP bodies, so a fault is
acted out as the status code Google's front end returns for it.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, NoReturn, Self, get_args

import grpc
import grpc.aio
import numpy as np
import structlog
from aiohttp import web
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import speech_v1, speech_v2
from google.cloud.speech_v1.services.speech.transports import (
    SpeechGrpcAsyncIOTransport as TransportV1,
)
from google.cloud.speech_v2.services.speech.transports import (
    SpeechGrpcAsyncIOTransport as TransportV2,
)
from livekit.plugins import google
from livekit.plugins.google.models import SpeechModelsV2

from plugins.sim.fault_schedule import FaultSchedule
from plugins.sim.faults import Fault, FaultType, SimState
from plugins.sim.http_common import HttpSimulator, run_cli
from plugins.sim.streaming_asr import INTERIM_EVERY_S, PartialDecoder
from plugins.sim.tts_audio import Pcm

log = structlog.get_logger(__name__)

SPEECH_THRESHOLD = 500  # int16 RMS of a 20 ms window that counts as speech
WINDOW_S = 0.02
START_WINDOWS = 3
PREROLL_WINDOWS = 15  # audio kept from before speech was detected, so no onset is clipped

_GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_MESSAGES = {
    grpc.StatusCode.INVALID_ARGUMENT: "Invalid recognition 'config': bad encoding..",
    grpc.StatusCode.UNAUTHENTICATED: "Request had invalid authentication credentials. Expected "
    "OAuth 2 access token, login cookie or other valid authentication credential.",
    grpc.StatusCode.PERMISSION_DENIED: "Cloud Speech-to-Text API has not been used in project "
    "sim-project before or it is disabled.",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "Resource has been exhausted (e.g. check quota).",
    grpc.StatusCode.INTERNAL: "Internal error encountered.",
    grpc.StatusCode.UNAVAILABLE: "The service is currently unavailable.",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Deadline Exceeded",
}
_QUOTA_MESSAGE = (
    "Quota exceeded for quota metric 'Audio time' and limit 'Audio time per minute' of service "
    "'speech.googleapis.com' for consumer 'project_number:000000000000'."
)


def grpc_code(fault: Fault) -> grpc.StatusCode:
    if fault.type is FaultType.QUOTA:
        return _GRPC_CODES.get(fault.status or 429, grpc.StatusCode.RESOURCE_EXHAUSTED)
    return _GRPC_CODES.get(fault.status or 500, grpc.StatusCode.UNKNOWN)


def _seconds(s: float) -> timedelta:
    return timedelta(seconds=s)


def _transcribe(pcm: Pcm, rate: int) -> str:
    from plugins.local.sphinx_stt import SphinxEngine

    return SphinxEngine.shared().transcribe(pcm, rate)


class _CallEndedError(Exception):
    """End the call with this gRPC status (how Google's front end reports a failure)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Versioned:
    """Builds v1 or v2 messages; the field names differ, the meaning does not."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.types: Any = speech_v2 if version == 2 else speech_v1
        self.event = self.types.StreamingRecognizeResponse.SpeechEventType

    def parse_config(self, first: Any) -> tuple[int, bool, bool, bool]:
        """(sample_rate, interim_results, vad_events, word_offsets) of the first request."""
        cfg = first.streaming_config
        if self.version == 2:
            if not first.recognizer:
                raise ValueError("Invalid resource field value in the request: recognizer")
            rc, feats = cfg.config, cfg.streaming_features
            rate = rc.explicit_decoding_config.sample_rate_hertz
            return (
                rate,
                feats.interim_results,
                feats.enable_voice_activity_events,
                rc.features.enable_word_time_offsets,
            )
        rc = cfg.config
        return (
            rc.sample_rate_hertz,
            cfg.interim_results,
            cfg.enable_voice_activity_events,
            rc.enable_word_time_offsets,
        )

    def audio_of(self, request: Any) -> bytes:
        return bytes(request.audio if self.version == 2 else request.audio_content)

    def words(self, text: str, start: float, end: float) -> list[Any]:
        tokens = text.split()
        if not tokens:
            return []
        step = (end - start) / len(tokens)
        out = []
        for i, w in enumerate(tokens):
            a, b = _seconds(start + i * step), _seconds(start + (i + 1) * step)
            if self.version == 2:
                out.append(self.types.WordInfo(word=w, start_offset=a, end_offset=b))
            else:
                out.append(self.types.WordInfo(word=w, start_time=a, end_time=b))
        return out

    def result(self, text: str, *, final: bool, start: float, end: float, words: bool) -> Any:
        alt = self.types.SpeechRecognitionAlternative(
            transcript=text,
            confidence=0.9 if final else 0.0,
            words=self.words(text, start, end) if words else [],
        )
        kwargs: dict[str, Any] = {
            "alternatives": [alt],
            "is_final": final,
            "stability": 0.0 if final else 0.8,
            "language_code": "en-us",
        }
        kwargs["result_end_offset" if self.version == 2 else "result_end_time"] = _seconds(end)
        return self.types.StreamingRecognitionResult(**kwargs)

    def response(self, *, results: list[Any] | None = None, event: int = 0, at: float) -> Any:
        kwargs: dict[str, Any] = {"results": results or [], "speech_event_type": event}
        if self.version == 2:
            kwargs["speech_event_offset"] = _seconds(at)
            kwargs["metadata"] = self.types.RecognitionResponseMetadata(request_id=uuid.uuid4().hex)
        else:
            kwargs["speech_event_time"] = _seconds(at)
        return self.types.StreamingRecognizeResponse(**kwargs)

    def recognize_response(self, text: str, duration: float) -> Any:
        alt = self.types.SpeechRecognitionAlternative(
            transcript=text, confidence=0.9, words=self.words(text, 0.0, duration)
        )
        kwargs: dict[str, Any] = {"alternatives": [alt], "language_code": "en-us"}
        kwargs["result_end_offset" if self.version == 2 else "result_end_time"] = _seconds(duration)
        result = self.types.SpeechRecognitionResult(**kwargs)
        billed = _seconds(math.ceil(duration))
        if self.version == 2:
            meta = self.types.RecognitionResponseMetadata(total_billed_duration=billed)
            return self.types.RecognizeResponse(results=[result] if text else [], metadata=meta)
        return self.types.RecognizeResponse(
            results=[result] if text else [], total_billed_time=billed
        )


class _Segmenter:
    """Energy endpointing over a stream of int16 audio (what Google's VAD events report)."""

    def __init__(self, rate: int, end_silence_s: float) -> None:
        self.rate = rate
        self.window = max(1, int(rate * WINDOW_S))
        self.end_windows = max(1, round(end_silence_s / WINDOW_S))
        self._pending = np.zeros(0, dtype=np.int16)
        self._loud_run = 0
        self._quiet_run = 0
        self.speaking = False
        self.utterance: list[Pcm] = []
        self.consumed = 0  # samples seen
        self.started_at = 0.0

    def feed(self, pcm: Pcm) -> list[str]:
        """Events ("begin" / "end") produced by this audio, in order."""
        events: list[str] = []
        data = np.concatenate([self._pending, pcm])
        n = (data.size // self.window) * self.window
        self._pending = data[n:]
        for i in range(0, n, self.window):
            win = data[i : i + self.window]
            self.consumed += win.size
            loud = float(np.sqrt(np.mean(win.astype(np.float64) ** 2))) >= SPEECH_THRESHOLD
            if self.speaking:
                self.utterance.append(win)
                self._quiet_run = 0 if loud else self._quiet_run + 1
                if self._quiet_run >= self.end_windows:
                    self.speaking = False
                    events.append("end")
            else:
                self._loud_run = self._loud_run + 1 if loud else 0
                self.utterance = [*self.utterance[-(PREROLL_WINDOWS - 1) :], win]
                if self._loud_run >= START_WINDOWS:
                    self.speaking = True
                    self._quiet_run = 0
                    self.started_at = (self.consumed - START_WINDOWS * self.window) / self.rate
                    events.append("begin")
        return events

    def take_utterance(self) -> Pcm:
        pcm = np.concatenate(self.utterance) if self.utterance else np.zeros(0, np.int16)
        self.utterance = []
        self._loud_run = 0
        return pcm

    @property
    def now(self) -> float:
        return self.consumed / self.rate


class GoogleSttSimulator(HttpSimulator):
    """Google's Speech service over gRPC on 127.0.0.1 (control routes over HTTP)."""

    name = "google-stt"

    def __init__(
        self,
        state: SimState | None = None,
        *,
        end_silence_s: float = 0.5,
        transcribe: Callable[[Pcm, int], str] = _transcribe,
    ) -> None:
        super().__init__(state)
        self.schedule = FaultSchedule(self.state.plan)
        self.end_silence_s = end_silence_s
        self._transcribe = transcribe
        self._grpc: grpc.aio.Server | None = None
        self._grpc_port: int | None = None

    def add_routes(self, app: web.Application) -> None:
        """Only the control routes: the API itself is gRPC."""

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC service (pass it to :class:`SimulatedGoogleSTT`)."""
        if self._grpc_port is None:
            raise RuntimeError("google-stt simulator: call start() first")
        return f"{self._host}:{self._grpc_port}"

    @property
    def base_url(self) -> str:
        """The gRPC target: what the client connects to (control routes are at ``origin``)."""
        return self.grpc_target

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        server = grpc.aio.server()
        for version in (1, 2):
            server.add_generic_rpc_handlers((self._handler(_Versioned(version)),))
        self._grpc_port = server.add_insecure_port(f"{host}:0")
        await server.start()
        self._grpc = server
        self._host = host
        try:
            await super().start(host, port)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        self._closing.set()
        server, self._grpc = self._grpc, None
        if server is not None:
            await server.stop(grace=0.2)
        await super().aclose()

    # -- gRPC plumbing -------------------------------------------------------------------
    def _handler(self, api: _Versioned) -> grpc.GenericRpcHandler:
        types = api.types

        def serialize(msg: Any) -> bytes:
            if isinstance(msg, bytes):  # MALFORMED: bytes that are no protobuf
                return msg
            return bytes(type(msg).serialize(msg))

        async def streaming(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            # Ending with set_code (not context.abort) keeps the status intact when the
            # client is still writing audio: an abort then surfaces as "Internal error".
            try:
                async for resp in self._streaming(api, requests, context):
                    yield resp
            except _CallEndedError as end:
                context.set_code(end.code)
                context.set_details(end.message)

        async def recognize(request: Any, context: Any) -> Any:
            try:
                return await self._recognize(api, request, context)
            except _CallEndedError as end:
                await context.abort(end.code, end.message)

        return grpc.method_handlers_generic_handler(
            f"google.cloud.speech.v{api.version}.Speech",
            {
                "StreamingRecognize": grpc.stream_stream_rpc_method_handler(
                    streaming,
                    request_deserializer=types.StreamingRecognizeRequest.deserialize,
                    response_serializer=serialize,
                ),
                "Recognize": grpc.unary_unary_rpc_method_handler(
                    recognize,
                    request_deserializer=types.RecognizeRequest.deserialize,
                    response_serializer=serialize,
                ),
            },
        )

    def _route(self, api: _Versioned, method: str) -> str:
        return f"gRPC v{api.version} {method}"

    async def _refuse(self, fault: Fault, context: Any) -> NoReturn:
        """Act out a refusal as the gRPC status Google returns (abort raises)."""
        if fault.type is FaultType.HANG:
            await self.park()
            raise _CallEndedError(grpc.StatusCode.UNAVAILABLE, "simulator shutting down")
        if fault.type is FaultType.RESET:
            raise _CallEndedError(grpc.StatusCode.UNAVAILABLE, "recvmsg:Connection reset by peer")
        code = grpc_code(fault)
        message = fault.message or (
            _QUOTA_MESSAGE if fault.type is FaultType.QUOTA else _MESSAGES.get(code, code.name)
        )
        raise _CallEndedError(code, message)

    # -- Recognize -----------------------------------------------------------------------
    async def _recognize(self, api: _Versioned, request: Any, context: Any) -> Any:
        if api.version == 2:
            rate = request.config.explicit_decoding_config.sample_rate_hertz
            audio = bytes(request.content)
        else:
            rate = request.config.sample_rate_hertz
            audio = bytes(request.audio.content)
        if rate <= 0:
            raise _CallEndedError(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hertz is required")
        pcm = np.frombuffer(audio, dtype="<i2").astype(np.int16)
        seconds = pcm.size / rate
        fault = self.schedule.decide(seconds)
        self.state.log.record(self._route(api, "Recognize"), fault, f"{seconds:.2f}s")
        if fault is not None and fault.type in (
            FaultType.STATUS,
            FaultType.QUOTA,
            FaultType.RESET,
            FaultType.HANG,
            FaultType.IN_BAND_ERROR,
            FaultType.CUT,
        ):
            await self._refuse(fault, context)
        if fault is not None and fault.type is FaultType.STALL:
            await self._refuse(Fault(FaultType.HANG), context)
        if fault is not None and fault.type is FaultType.SLOW_FIRST:
            await self.park(fault.delay_s)
        if fault is not None and fault.type is FaultType.MALFORMED:
            return b"\xff\xff\xff\xff"
        empty = fault is not None and fault.type in (FaultType.EMPTY, FaultType.SILENT)
        text = "" if empty else await asyncio.to_thread(self._transcribe, pcm, rate)
        return api.recognize_response(text, seconds)

    # -- StreamingRecognize --------------------------------------------------------------
    async def _streaming(
        self, api: _Versioned, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        route = self._route(api, "StreamingRecognize")
        try:
            first = await anext(requests)
            rate, interim, vad_events, word_offsets = api.parse_config(first)
        except (StopAsyncIteration, ValueError) as e:
            self.state.log.record(route, None, f"bad request: {e}")
            raise _CallEndedError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid request: {e}") from e
        if rate <= 0:
            self.state.log.record(route, None, "bad request: no sample rate")
            raise _CallEndedError(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hertz is required")
        fault = self.schedule.decide()
        self.state.log.record(route, fault, f"{rate} Hz")
        kind = fault.type if fault is not None else None
        if fault is not None and kind in (
            FaultType.STATUS,
            FaultType.QUOTA,
            FaultType.RESET,
            FaultType.HANG,
        ):
            await self._refuse(fault, context)

        seg = _Segmenter(rate, self.end_silence_s)
        sent = 0
        after = fault.after_chunks if fault is not None else 0
        stalled = False

        partial: PartialDecoder | None = None  # the utterance in progress, decoded as it comes
        last_interim = 0.0

        async def results_for(pcm: Pcm, start: float, end: float) -> list[Any]:
            nonlocal partial
            decoder, partial = partial, None
            if kind in (FaultType.EMPTY, FaultType.SILENT):
                if decoder is not None:
                    await asyncio.to_thread(decoder.close)
                return []
            if self._transcribe is _transcribe:  # the default engine: finish what is decoded
                decoder = decoder or PartialDecoder(rate)
                text = await asyncio.to_thread(decoder.finish, pcm)
            else:
                if decoder is not None:
                    await asyncio.to_thread(decoder.close)
                text = await asyncio.to_thread(self._transcribe, pcm, rate)
            if not text:
                return []
            final = api.result(text, final=True, start=start, end=end, words=word_offsets)
            return [api.response(results=[final], at=end)]

        async def interim_result() -> list[Any]:
            """Google's ``is_final=false`` hypothesis, about once a second of speech."""
            nonlocal partial, last_interim
            if kind in (FaultType.EMPTY, FaultType.SILENT) or not seg.utterance:
                return []
            last_interim = seg.now
            partial = partial or PartialDecoder(rate)
            text = await asyncio.to_thread(partial.advance, np.concatenate(seg.utterance))
            if not text:
                return []
            start = seg.started_at
            result = api.result(text, final=False, start=start, end=seg.now, words=False)
            return [api.response(results=[result], at=seg.now)]

        async def outgoing(events: list[str]) -> AsyncIterator[Any]:
            nonlocal last_interim
            for ev in events:
                if ev == "begin":
                    last_interim = seg.now
                    if vad_events:
                        yield api.response(event=api.event.SPEECH_ACTIVITY_BEGIN, at=seg.started_at)
                    continue
                if ev == "interim":
                    for resp in await interim_result():
                        yield resp
                    continue
                start = seg.started_at
                for resp in await results_for(seg.take_utterance(), start, seg.now):
                    yield resp
                if vad_events:
                    yield api.response(event=api.event.SPEECH_ACTIVITY_END, at=seg.now)

        async def deliver(events: list[str]) -> AsyncIterator[Any]:
            """Responses for these events, with the stream fault acted out on them."""
            nonlocal sent, stalled
            async for resp in outgoing(events):
                if stalled:
                    continue
                if kind is FaultType.SLOW_FIRST and sent == 0 and fault is not None:
                    await self.park(fault.delay_s)
                if sent >= after and kind is not None:
                    if kind is FaultType.MALFORMED:
                        yield b"\x0a\xff\xff\xff\xff"
                        return
                    if kind in (FaultType.CUT, FaultType.IN_BAND_ERROR):
                        code = (
                            grpc.StatusCode.UNAVAILABLE
                            if kind is FaultType.CUT
                            else grpc_code(fault or Fault(FaultType.STATUS))
                        )
                        raise _CallEndedError(code, _MESSAGES.get(code, code.name))
                    if kind is FaultType.STALL:
                        stalled = True
                        continue
                yield resp
                sent += 1

        async for request in requests:
            audio = api.audio_of(request)
            if not audio:
                continue
            pcm = np.frombuffer(audio, dtype="<i2").astype(np.int16)
            self.schedule.bill(pcm.size / rate)
            events = seg.feed(pcm)
            if interim and seg.speaking and seg.now - last_interim >= INTERIM_EVERY_S:
                events.append("interim")
            async for resp in deliver(events):
                yield resp
        # half-close: the caller finished sending; flush an utterance still open
        if seg.speaking:
            seg.speaking = False
            async for resp in deliver(["end"]):
                yield resp
        if partial is not None:
            await asyncio.to_thread(partial.close)
        if stalled:
            await self.park()


class SimulatedGoogleSTT(google.STT):
    """The real Google STT plugin, connected to a :class:`GoogleSttSimulator` over plaintext.

    Only the client factory differs (the plugin offers no endpoint option); it overrides the
    plugin's ``_create_client`` hook, pinned by tests/test_sim_google_stt.py.
    """

    def __init__(self, target: str, **kwargs: Any) -> None:
        kwargs.setdefault("credentials", AnonymousCredentials())  # type: ignore[no-untyped-call]
        kwargs.setdefault("project", "sim-project")
        super().__init__(**kwargs)
        self._sim_target = target

    async def _create_client(
        self, timeout: float
    ) -> speech_v2.SpeechAsyncClient | speech_v1.SpeechAsyncClient:
        channel = grpc.aio.insecure_channel(self._sim_target)
        options = ClientOptions(api_endpoint=self._sim_target)
        if self.model in get_args(SpeechModelsV2):  # the plugin's own rule for v1 vs v2
            return speech_v2.SpeechAsyncClient(
                transport=TransportV2(channel=channel), client_options=options
            )
        return speech_v1.SpeechAsyncClient(
            transport=TransportV1(channel=channel), client_options=options
        )


def main(argv: list[str] | None = None) -> int:
    return run_cli(GoogleSttSimulator, argv, "Google Cloud Speech-to-Text (gRPC) simulator")


if __name__ == "__main__":
    raise SystemExit(main())
