"""local-tts: a neural voice that needs no network and no key.

hibari (a distilled Kokoro voice, ONNX weights inside the wheel) is the "good quality, free" step
of the TTS chain: when every cloud voice is down the caller still hears a natural voice. Only the
bundled voice is allowed, because any other hibari voice would be downloaded at run time.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import structlog
from livekit.agents import tokenize
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from plugins.local.audio import Int16Array, float_to_int16
from plugins.local.pcm_tts import EngineTTS

if TYPE_CHECKING:
    from plugins.local.speech_client import SpeechClient

log = structlog.get_logger(__name__)

BUNDLED_VOICE = "heart"
SAMPLE_RATE = 24000
MIN_SPEED, MAX_SPEED = 0.5, 2.0
#: A sentence the shared service has not voiced by then is voiced by the next TTS in the chain.
REMOTE_TIMEOUT_S = 5.0


class HibariEngine:
    """The hibari model, loaded once per process; ``synthesize`` is safe from any thread."""

    _shared: ClassVar[HibariEngine | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"hibari threads must be >= 1, got {threads}")
        from hibari import SAMPLE_RATE as HIBARI_RATE
        from hibari import Hibari

        if HIBARI_RATE != SAMPLE_RATE:
            raise RuntimeError(
                f"hibari produces {HIBARI_RATE} Hz but this adapter expects {SAMPLE_RATE} Hz; "
                "pin hibari-tts to the version in pyproject.toml"
            )
        started = time.perf_counter()
        self._model: Any = Hibari(voice=BUNDLED_VOICE, threads=threads)
        # the model's tagger and lexicon are not documented as thread-safe: one call at a time
        self._lock = threading.Lock()
        self.synthesize("Ready.")  # builds the lazily loaded G2P now, not on the first caller
        log.info(
            "local_tts.loaded",
            engine="hibari",
            voice=BUNDLED_VOICE,
            seconds=round(time.perf_counter() - started, 3),
        )

    @classmethod
    def shared(cls) -> HibariEngine:
        """The process-wide engine, loaded on first use (blocking; call off the event loop)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @classmethod
    def is_loaded(cls) -> bool:
        return cls._shared is not None

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def synthesize(self, text: str, *, speed: float = 1.0) -> Int16Array:
        """Text -> mono int16 PCM at 24 kHz; empty for text with nothing to pronounce."""
        if not isinstance(text, str):
            raise TypeError(f"text to synthesize must be a str, got {type(text).__name__}")
        _check_speed(speed)
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        with self._lock:
            audio = self._model(text, speed=speed)
        return float_to_int16(audio)


def _check_speed(speed: float) -> None:
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(
            f"hibari speed must be between {MIN_SPEED} and {MAX_SPEED} (1.0 = natural pace), "
            f"got {speed}"
        )


class HibariTTS(EngineTTS):
    """LiveKit TTS "local-tts": hibari in-process, 24 kHz mono, streaming by sentence."""

    def __init__(
        self,
        *,
        speed: float = 1.0,
        sentence_tokenizer: NotGivenOr[tokenize.SentenceTokenizer] = NOT_GIVEN,
    ) -> None:
        _check_speed(speed)
        self._speed = speed
        super().__init__(
            load_engine=self._engine_at_speed,
            sample_rate=SAMPLE_RATE,
            label="local-tts",
            provider="hibari",
            model=f"hibari-{BUNDLED_VOICE}",
            sentence_tokenizer=sentence_tokenizer,
        )

    @classmethod
    def load(cls) -> HibariEngine:
        """Load the model once per process (blocking); for the worker's prewarm/setup hook."""
        return HibariEngine.shared()

    def _engine_at_speed(self) -> _SpeedEngine:
        from plugins.local.speech_client import service_client

        client = service_client()
        if client is not None:
            return _SpeedEngine(_RemoteHibari(client), self._speed)
        return _SpeedEngine(HibariEngine.shared(), self._speed)

    def prewarm(self) -> None:
        """Load the voice in the background, unless the worker's shared service holds it."""
        from plugins.local.speech_client import service_client

        if service_client() is None:
            super().prewarm()


class _Voice(Protocol):
    @property
    def sample_rate(self) -> int: ...

    def synthesize(self, text: str, *, speed: float = 1.0) -> Int16Array: ...


class _RemoteHibari:
    """hibari in the worker's shared speech service (no weights in this process)."""

    def __init__(self, client: SpeechClient) -> None:
        self._client = client

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def synthesize(self, text: str, *, speed: float = 1.0) -> Int16Array:
        _check_speed(speed)
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        return self._client.synthesize(text, speed=speed, timeout_s=REMOTE_TIMEOUT_S)


class _SpeedEngine:
    """The shared engine seen through one TTS instance's speaking rate."""

    def __init__(self, engine: _Voice, speed: float) -> None:
        self._engine = engine
        self._speed = speed

    @property
    def sample_rate(self) -> int:
        return self._engine.sample_rate

    def synthesize(self, text: str) -> Int16Array:
        return self._engine.synthesize(text, speed=self._speed)
