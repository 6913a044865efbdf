"""free-stt: PocketSphinx in-process, the last ears of the STT chain.

Its accuracy is modest, but it needs no network, no key and no download (the en-US acoustic
model, dictionary and language model ship inside the pocketsphinx wheel), so a caller is still
understood when every cloud recogniser is down. Streaming uses PocketSphinx's own endpointer
(WebRTC-style VAD) to mark speech start/end, so the chain needs no extra VAD wrapper for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Never

import structlog
from livekit.agents import APIError, LanguageCode, stt, utils
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)
from livekit.agents.utils import AudioBuffer

from plugins.local.audio import (
    Int16Array,
    StreamingGain,
    buffer_to_mono,
    condition_for_asr,
    frame_to_mono,
    require_mono_int16,
)

log = structlog.get_logger(__name__)

SAMPLE_RATE = 16000
LANGUAGE = "en-US"
MODEL = "cmusphinx-en-us"


def check_language(language: str) -> LanguageCode:
    """The bundled model is English only; anything else is a configuration error."""
    if not language.lower().startswith("en"):
        raise ValueError(
            f"free-stt (PocketSphinx) only has an English model; got language {language!r}. "
            f"Use {LANGUAGE!r} or put a multilingual STT before it in the chain"
        )
    return LanguageCode(LANGUAGE)


class SphinxEngine:
    """PocketSphinx decoders, loaded once per process and safe to use from any thread.

    A decoder holds one utterance's search state, so each concurrent user (a batch call, a live
    stream) leases its own from a small pool; the first is loaded up front, more only on demand.
    """

    _shared: ClassVar[SphinxEngine | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        started = time.perf_counter()
        self._idle: list[Any] = [self._new_decoder()]
        self._pool_lock = threading.Lock()
        log.info(
            "local_stt.loaded",
            engine="pocketsphinx",
            seconds=round(time.perf_counter() - started, 3),
        )

    @classmethod
    def shared(cls) -> SphinxEngine:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @staticmethod
    def _new_decoder() -> Any:
        from pocketsphinx import Decoder

        return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def acquire(self) -> Any:
        """A decoder for exclusive use (blocking: may load a new one); give it back with release."""
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
        return self._new_decoder()

    def release(self, decoder: Any) -> None:
        with self._pool_lock:
            self._idle.append(decoder)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Any]:
        decoder = self.acquire()
        try:
            yield decoder
        finally:
            self.release(decoder)

    def transcribe(self, pcm: Int16Array, sample_rate: int) -> str:
        """Mono int16 PCM at any rate -> lower-case words ("" for silence)."""
        require_mono_int16(pcm)
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        audio = condition_for_asr(pcm, sample_rate, SAMPLE_RATE)
        if not contains_speech(audio):
            return ""  # the decoder "hears" words in pure noise or silence; don't let it
        with self.lease() as decoder:
            decoder.start_utt()
            decoder.process_raw(audio.tobytes(), full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
        return str(hyp.hypstr).strip() if hyp is not None else ""


def contains_speech(audio: Int16Array, *, window_s: float = 0.3, ratio: float = 0.9) -> bool:
    """Whether PocketSphinx's endpointer finds any speech region in 16 kHz audio."""
    from pocketsphinx import Endpointer

    endpointer = Endpointer(window=window_s, ratio=ratio, sample_rate=SAMPLE_RATE)
    data = audio.tobytes()
    fb = int(endpointer.frame_bytes)
    for start in range(0, len(data) - fb + 1, fb):
        if endpointer.process(data[start : start + fb]) is not None or endpointer.in_speech:
            return True
    return False


class SphinxSTT(stt.STT[Never]):
    """LiveKit STT "free-stt": batch ``recognize`` and a streaming recogniser with its own VAD."""

    def __init__(
        self,
        *,
        language: str = LANGUAGE,
        vad_window_s: float = 0.3,
        vad_ratio: float = 0.9,
        vad_mode: int = 0,
        interim_every_s: float = 0.5,
    ) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True,
                interim_results=True,
                offline_recognize=True,
                manual_flush=False,
            )
        )
        self._language = check_language(language)
        if not 0.03 <= vad_window_s <= 5.0:
            raise ValueError(f"vad_window_s must be 0.03..5.0 seconds, got {vad_window_s}")
        if not 0.0 < vad_ratio < 1.0:
            raise ValueError(f"vad_ratio must be strictly between 0 and 1, got {vad_ratio}")
        if vad_mode not in (0, 1, 2, 3):
            raise ValueError(f"vad_mode is PocketSphinx's aggressiveness 0..3, got {vad_mode}")
        if interim_every_s <= 0:
            raise ValueError(f"interim_every_s must be positive, got {interim_every_s}")
        from pocketsphinx import Endpointer

        try:
            Endpointer(
                window=vad_window_s, ratio=vad_ratio, vad_mode=vad_mode, sample_rate=SAMPLE_RATE
            )
        except ValueError as e:
            raise ValueError(
                f"PocketSphinx rejects vad_window_s={vad_window_s} with vad_ratio={vad_ratio}: "
                "the window must span several 30 ms frames (e.g. 0.3 s with ratio 0.9)"
            ) from e
        self._vad = (vad_window_s, vad_ratio, vad_mode)
        self._interim_every_s = interim_every_s

    @property
    def label(self) -> str:
        return "free-stt"

    @property
    def provider(self) -> str:
        return "pocketsphinx"

    @property
    def model(self) -> str:
        return MODEL

    @classmethod
    def load(cls) -> SphinxEngine:
        """Load the model once per process (blocking); for the worker's prewarm/setup hook."""
        return SphinxEngine.shared()

    def prewarm(self) -> None:
        """Start loading the model in the background; LiveKit calls this on the event loop."""
        threading.Thread(target=SphinxEngine.shared, name="free-stt-prewarm", daemon=True).start()

    def _resolve_language(self, language: NotGivenOr[str]) -> LanguageCode:
        return check_language(language) if utils.is_given(language) else self._language

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        lang = self._resolve_language(language)
        pcm, rate = buffer_to_mono(buffer)

        def run() -> str:
            return SphinxEngine.shared().transcribe(pcm, rate)

        try:
            text = await asyncio.to_thread(run)
        except (TypeError, ValueError):
            raise
        except Exception as e:
            raise APIError(f"free-stt: PocketSphinx failed: {e}", retryable=False) from e
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=utils.shortuuid(),
            alternatives=[
                stt.SpeechData(
                    language=lang, text=text, start_time=0.0, end_time=pcm.size / max(rate, 1)
                )
            ],
        )

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> SphinxRecognizeStream:
        return SphinxRecognizeStream(
            stt=self,
            language=self._resolve_language(language),
            conn_options=conn_options,
            vad=self._vad,
            interim_every_s=self._interim_every_s,
        )


class UtteranceTracker:
    """Endpointer + decoder over a continuous 16 kHz stream, turned into LiveKit speech events.

    Synchronous and single-user: the stream calls it from one worker thread at a time.
    """

    def __init__(
        self,
        decoder: Any,
        *,
        language: LanguageCode,
        vad: tuple[float, float, int],
        interim_every_s: float,
        time_offset: float = 0.0,
    ) -> None:
        self._decoder = decoder
        self._language = language
        self._vad = vad
        self._interim_every_s = interim_every_s
        self._time_offset = time_offset
        self._endpointer = self._new_endpointer()
        self._frame_bytes: int = self._endpointer.frame_bytes
        self._pending = bytearray()
        self._consumed_s = 0.0  # audio before the current endpointer (it restarts on flush)
        self._endpointer_s = 0.0  # audio the current endpointer has seen
        self._unreported_s = 0.0  # audio not yet reported as usage
        self._in_utterance = False
        self._utt_start = 0.0
        self._since_interim_s = 0.0
        self._last_interim = ""
        self._request_id = utils.shortuuid()

    def _new_endpointer(self) -> Any:
        from pocketsphinx import Endpointer

        window, ratio, mode = self._vad
        return Endpointer(window=window, ratio=ratio, vad_mode=mode, sample_rate=SAMPLE_RATE)

    def feed(self, pcm: bytes) -> list[stt.SpeechEvent]:
        """16 kHz mono int16 bytes in, whatever speech events they complete out."""
        self._pending.extend(pcm)
        self._unreported_s += len(pcm) / 2 / SAMPLE_RATE
        events: list[stt.SpeechEvent] = []
        fb = self._frame_bytes
        usable = len(self._pending) - len(self._pending) % fb
        for start in range(0, usable, fb):
            speech = self._endpointer.process(bytes(self._pending[start : start + fb]))
            self._endpointer_s += fb / 2 / SAMPLE_RATE
            self._advance(speech, events)
        del self._pending[:usable]
        return events

    def finish(self) -> list[stt.SpeechEvent]:
        """End of a segment (flush or end of input): finalize any utterance in progress."""
        events: list[stt.SpeechEvent] = []
        if self._in_utterance:
            # end_stream needs at least one sample; it returns the speech still in its window
            speech = self._endpointer.end_stream(bytes(self._pending) or b"\0\0")
            self._endpointer_s += len(self._pending) / 2 / SAMPLE_RATE
            if speech:
                self._decoder.process_raw(speech)
            self._end_utterance(self._now(), events)
        self._pending.clear()
        self._consumed_s += self._endpointer_s
        self._endpointer_s = 0.0
        self._endpointer = self._new_endpointer()
        self._report_usage(events)
        return events

    def close(self) -> None:
        """Leave the decoder clean for its next user."""
        if self._in_utterance:
            self._decoder.end_utt()
            self._in_utterance = False

    def _now(self) -> float:
        return self._time_offset + self._consumed_s + self._endpointer_s

    def _advance(self, speech: bytes | None, events: list[stt.SpeechEvent]) -> None:
        in_speech = bool(self._endpointer.in_speech)
        if in_speech and not self._in_utterance:
            self._in_utterance = True
            self._utt_start = self._time_offset + self._consumed_s + self._endpointer.speech_start
            self._since_interim_s = 0.0
            self._last_interim = ""
            self._decoder.start_utt()
            events.append(
                stt.SpeechEvent(
                    type=stt.SpeechEventType.START_OF_SPEECH, request_id=self._request_id
                )
            )
        if speech is not None and self._in_utterance:
            self._decoder.process_raw(speech)
            self._since_interim_s += len(speech) / 2 / SAMPLE_RATE
            if self._since_interim_s >= self._interim_every_s:
                self._since_interim_s = 0.0
                self._emit_interim(events)
        if not in_speech and self._in_utterance:
            self._end_utterance(
                self._time_offset + self._consumed_s + self._endpointer.speech_end, events
            )
            self._report_usage(events)

    def _emit_interim(self, events: list[stt.SpeechEvent]) -> None:
        hyp = self._decoder.hyp()
        text = str(hyp.hypstr).strip() if hyp is not None else ""
        if text and text != self._last_interim:
            self._last_interim = text
            events.append(self._transcript(stt.SpeechEventType.INTERIM_TRANSCRIPT, text, 0.0))

    def _end_utterance(self, end_time: float, events: list[stt.SpeechEvent]) -> None:
        self._decoder.end_utt()
        self._in_utterance = False
        hyp = self._decoder.hyp()
        text = str(hyp.hypstr).strip() if hyp is not None else ""
        if text:
            confidence = min(1.0, max(0.0, float(hyp.prob)))
            events.append(
                self._transcript(
                    stt.SpeechEventType.FINAL_TRANSCRIPT, text, confidence, end_time=end_time
                )
            )
        events.append(
            stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH, request_id=self._request_id)
        )
        self._request_id = utils.shortuuid()

    def _transcript(
        self,
        kind: stt.SpeechEventType,
        text: str,
        confidence: float,
        *,
        end_time: float | None = None,
    ) -> stt.SpeechEvent:
        return stt.SpeechEvent(
            type=kind,
            request_id=self._request_id,
            alternatives=[
                stt.SpeechData(
                    language=self._language,
                    text=text,
                    start_time=self._utt_start,
                    end_time=end_time if end_time is not None else self._now(),
                    confidence=confidence,
                )
            ],
        )

    def _report_usage(self, events: list[stt.SpeechEvent]) -> None:
        if self._unreported_s > 0:
            events.append(
                stt.SpeechEvent(
                    type=stt.SpeechEventType.RECOGNITION_USAGE,
                    request_id=self._request_id,
                    recognition_usage=stt.RecognitionUsage(audio_duration=self._unreported_s),
                )
            )
            self._unreported_s = 0.0


def _return_decoder_to(engine: SphinxEngine) -> Callable[[asyncio.Future[Any]], None]:
    def done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            engine.release(future.result())

    return done


class SphinxRecognizeStream(stt.RecognizeStream):
    """Live recognition: LiveKit resamples input to 16 kHz; decoding runs in a worker thread."""

    # feed the decoder in slices of at least this much audio, not one thread hop per 10 ms frame
    _MIN_BATCH_BYTES = int(SAMPLE_RATE * 2 * 0.06)

    def __init__(
        self,
        *,
        stt: SphinxSTT,
        language: LanguageCode,
        conn_options: APIConnectOptions,
        vad: tuple[float, float, int],
        interim_every_s: float,
    ) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self._language = language
        self._vad = vad
        self._interim_every_s = interim_every_s

    async def _run(self) -> None:
        engine = await asyncio.to_thread(SphinxEngine.shared)
        acquiring = asyncio.ensure_future(asyncio.to_thread(engine.acquire))
        try:
            decoder = await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            # the worker thread still hands over a decoder: put it back when it does
            acquiring.add_done_callback(_return_decoder_to(engine))
            raise
        tracker = UtteranceTracker(
            decoder,
            language=self._language,
            vad=self._vad,
            interim_every_s=self._interim_every_s,
            time_offset=self.start_time_offset,
        )
        # one lock per tracker: a cancelled await must not hand the decoder back mid-call
        busy = threading.Lock()

        def locked(fn: Any, *args: Any) -> list[stt.SpeechEvent]:
            with busy:
                result: list[stt.SpeechEvent] = fn(*args)
                return result

        def release() -> None:
            with busy:
                tracker.close()
                engine.release(decoder)

        batch = bytearray()
        gain = StreamingGain(sample_rate=SAMPLE_RATE)  # a quiet phone line is lifted
        try:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    events = await asyncio.to_thread(locked, tracker.feed, bytes(batch))
                    events += await asyncio.to_thread(locked, tracker.finish)
                    batch.clear()
                else:
                    batch.extend(gain.apply(frame_to_mono(item)).tobytes())
                    if len(batch) < self._MIN_BATCH_BYTES:
                        continue
                    events = await asyncio.to_thread(locked, tracker.feed, bytes(batch))
                    batch.clear()
                for ev in events:
                    self._event_ch.send_nowait(ev)
            if batch:
                events = await asyncio.to_thread(locked, tracker.feed, bytes(batch))
                events += await asyncio.to_thread(locked, tracker.finish)
                for ev in events:
                    self._event_ch.send_nowait(ev)
        except APIError:
            raise
        except Exception as e:
            raise APIError(f"free-stt: PocketSphinx failed: {e}", retryable=False) from e
        finally:
            await asyncio.shield(asyncio.to_thread(release))
