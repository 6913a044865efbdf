"""free-tts: eSpeak NG in-process, the last voice of the TTS chain.

Robotic but tiny, instant and dependency-free: libespeak-ng and its data ship inside the
espeakng-loader wheel and are driven through ctypes in synchronous mode (a synth callback
collects the PCM), so no system package, subprocess or network is involved.
"""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import structlog
from livekit.agents import tokenize
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from plugins.local.audio import Int16Array
from plugins.local.pcm_tts import EngineTTS

log = structlog.get_logger(__name__)

SAMPLE_RATE = 22050
DEFAULT_VOICE = "en-us"
DEFAULT_RATE_WPM = 150
MIN_RATE_WPM, MAX_RATE_WPM = 80, 450

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1
_EE_OK = 0

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _load_library() -> tuple[ctypes.CDLL, Path]:
    """The wheel's own libespeak-ng and data directory, never a system copy."""
    import espeakng_loader

    lib_path = Path(espeakng_loader.get_library_path())
    data_path = Path(espeakng_loader.get_data_path())
    if not lib_path.is_file():
        raise RuntimeError(
            f"espeakng-loader's libespeak-ng is missing at {lib_path}; reinstall espeakng-loader"
        )
    lib = ctypes.CDLL(str(lib_path))
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    return lib, data_path


class EspeakEngine:
    """The process's one eSpeak NG (the library is a global singleton; calls are serialized)."""

    _shared: ClassVar[EspeakEngine | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        started = time.perf_counter()
        self._lib, data_path = _load_library()
        # eSpeak looks for <path>/espeak-ng-data, so hand it the directory holding the data
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path.parent).encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise with data at {data_path}")
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"eSpeak NG reports {rate} Hz, this adapter expects {SAMPLE_RATE}")
        self._lock = threading.Lock()
        self._chunks: list[Int16Array] = []
        self._callback = _SynthCallback(self._collect)  # must outlive every synth call
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice = ""
        self._rate = 0
        with self._lock:
            self._configure(DEFAULT_VOICE, DEFAULT_RATE_WPM)
        log.info(
            "local_tts.loaded",
            engine="espeak-ng",
            data=str(data_path),
            seconds=round(time.perf_counter() - started, 3),
        )

    @classmethod
    def shared(cls) -> EspeakEngine:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def synthesize(
        self, text: str, *, voice: str = DEFAULT_VOICE, rate_wpm: int = DEFAULT_RATE_WPM
    ) -> Int16Array:
        """Text -> mono int16 PCM at 22.05 kHz (plain text; markup is spoken as text)."""
        if not isinstance(text, str):
            raise TypeError(f"text to synthesize must be a str, got {type(text).__name__}")
        _check_rate(rate_wpm)
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        data = text.encode("utf-8") + b"\0"
        with self._lock:
            self._configure(voice, rate_wpm)
            self._chunks = []
            status = self._lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            chunks, self._chunks = self._chunks, []
        if status != _EE_OK:
            raise RuntimeError(f"eSpeak NG could not synthesize the text (error {status})")
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def has_voice(self, voice: str) -> bool:
        with self._lock:
            current = self._voice
            ok = bool(self._lib.espeak_SetVoiceByName(voice.encode()) == _EE_OK)
            if current:
                self._lib.espeak_SetVoiceByName(current.encode())
            return ok

    def _configure(self, voice: str, rate_wpm: int) -> None:
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise ValueError(
                    f"eSpeak NG has no voice {voice!r}; use a language code such as "
                    f"{DEFAULT_VOICE!r}, 'en' or 'de'"
                )
            self._voice = voice
            self._rate = 0  # a new voice resets the rate
        if rate_wpm != self._rate:
            self._lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
            self._rate = rate_wpm

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], num_samples: int, _events: int) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = keep synthesizing


def _check_rate(rate_wpm: int) -> None:
    if not MIN_RATE_WPM <= rate_wpm <= MAX_RATE_WPM:
        raise ValueError(
            f"eSpeak rate must be {MIN_RATE_WPM}..{MAX_RATE_WPM} words per minute, got {rate_wpm}"
        )


class EspeakTTS(EngineTTS):
    """LiveKit TTS "free-tts": eSpeak NG in-process, 22.05 kHz mono, streaming by sentence."""

    def __init__(
        self,
        *,
        voice: str = DEFAULT_VOICE,
        rate_wpm: int = DEFAULT_RATE_WPM,
        sentence_tokenizer: NotGivenOr[tokenize.SentenceTokenizer] = NOT_GIVEN,
    ) -> None:
        if not voice or not voice.strip():
            raise ValueError(f"eSpeak voice must be a language code such as {DEFAULT_VOICE!r}")
        _check_rate(rate_wpm)
        if not EspeakEngine.shared().has_voice(voice):  # initialising eSpeak takes milliseconds
            raise ValueError(
                f"eSpeak NG has no voice {voice!r}; use a language code such as "
                f"{DEFAULT_VOICE!r}, 'en' or 'de'"
            )
        self._voice = voice
        self._rate_wpm = rate_wpm
        super().__init__(
            load_engine=self._engine_with_voice,
            sample_rate=SAMPLE_RATE,
            label="free-tts",
            provider="espeak-ng",
            model=voice,
            sentence_tokenizer=sentence_tokenizer,
        )

    @classmethod
    def load(cls) -> EspeakEngine:
        """Initialise eSpeak NG once per process (blocking); for the worker's prewarm hook."""
        return EspeakEngine.shared()

    def _engine_with_voice(self) -> _VoiceEngine:
        return _VoiceEngine(EspeakEngine.shared(), self._voice, self._rate_wpm)


class _VoiceEngine:
    """The shared engine seen through one TTS instance's voice and rate."""

    def __init__(self, engine: EspeakEngine, voice: str, rate_wpm: int) -> None:
        self._engine = engine
        self._voice = voice
        self._rate_wpm = rate_wpm

    @property
    def sample_rate(self) -> int:
        return self._engine.sample_rate

    def synthesize(self, text: str) -> Int16Array:
        return self._engine.synthesize(text, voice=self._voice, rate_wpm=self._rate_wpm)
