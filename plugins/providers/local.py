"""The providers that need no network and no key: every chain ends on one of them.

``free-stt``, ``free-llm`` and ``free-tts`` are the floors (always present, never guarded
off); ``local-tts`` is the "good quality, free" neural voice a chain may place between cloud
voices.
"""

from __future__ import annotations

from typing import Any

import structlog
from livekit.agents import llm, stt, tts

from plugins.local.espeak_tts import DEFAULT_VOICE as DEFAULT_ESPEAK_VOICE
from plugins.local.responder import Responder
from plugins.local.whisper_stt import (
    COMPUTE_TYPES,
    FULL_WINDOW_S,
    MAX_BEAM_SIZE,
    MAX_THREADS,
    MIN_WINDOW_S,
    WhisperOptions,
)
from plugins.providers.definition import (
    BuildContext,
    Option,
    Provider,
    ProviderUnusableError,
    extra_float,
)
from plugins.spec import ProviderSpec

_WHISPER_DEFAULTS = WhisperOptions()


def _free_stt(spec: ProviderSpec, ctx: BuildContext) -> stt.STT[Any]:
    from plugins.local.sphinx_stt import SphinxSTT

    return SphinxSTT()


def _local_stt(spec: ProviderSpec, ctx: BuildContext) -> stt.STT[Any]:
    from plugins.local.whisper_stt import WhisperSTT, options_from

    try:
        options = options_from(spec.extra, spec.model)
    except ValueError as e:
        raise ProviderUnusableError(str(e)) from None
    return WhisperSTT(options=options)


def _local_stt_problem(spec: ProviderSpec) -> str | None:
    """doctor: the configured Whisper model must be on disk (else the packaged one is used)."""
    from plugins.local.whisper_stt import PACKAGED_MODEL, options_from, resolve_model_dir

    try:
        resolve_model_dir(options_from(spec.extra, spec.model).model)
    except (ValueError, FileNotFoundError) as e:
        return f"{e}; until then the packaged {PACKAGED_MODEL} is used"
    return None


def _free_llm(spec: ProviderSpec, ctx: BuildContext) -> llm.LLM[Any]:
    from plugins.local.scripted_llm import MODEL, ScriptedLLM

    responder = ctx.responder if ctx.responder is not None else _faq_responder(spec)
    return ScriptedLLM(responder, model=spec.model or MODEL)


def _faq_responder(spec: ProviderSpec) -> Responder:
    """The library's generic floor: ``extra["company"]`` and an ``extra["faq_file"]`` TOML.

    A bad FAQ file is logged loudly and the floor speaks without it: the chain never loses
    its last provider over a typo.
    """
    from plugins.local.faq import FaqBook
    from plugins.local.faq_responder import FaqResponder

    business = spec.extra.get("company", "")
    faq_file = spec.extra.get("faq_file")
    if not faq_file:
        return FaqResponder(business=business)
    try:
        book = FaqBook.from_file(faq_file, fields={"company": business or "us"})
    except ValueError as e:
        structlog.get_logger(__name__).error("free_llm_faq_unusable", reason=str(e))
        return FaqResponder(business=business)
    return FaqResponder(book, business=business)


def _local_tts(spec: ProviderSpec, ctx: BuildContext) -> tts.TTS[Any]:
    from plugins.local.hibari_tts import HibariTTS

    speed = extra_float(spec, "speed")
    return HibariTTS(speed=speed) if speed is not None else HibariTTS()


def _free_tts(spec: ProviderSpec, ctx: BuildContext) -> tts.TTS[Any]:
    from plugins.local.espeak_tts import EspeakTTS

    return EspeakTTS(voice=spec.voice or DEFAULT_ESPEAK_VOICE)


LOCAL_STT = Provider(
    slot="stt",
    name="local-stt",
    summary="Whisper tiny.en from a package, in the worker's shared speech process (good "
    "accuracy, free; non-streaming: wrapped with the VAD)",
    build=_local_stt,
    # the defaults are WhisperOptions' (one place); the settings only spell them as text
    model=Option(
        "LOCAL_STT_MODEL",
        "local-stt Whisper model: tiny.en (packaged), base (packaged in the whisper-base "
        "extra: more accurate, twice the decode time), a faster-whisper size fetched by "
        "download-files (base.en, small.en...) or a CTranslate2 model directory",
        default=_WHISPER_DEFAULTS.model,
    ),
    options={
        "beam_size": Option(
            "LOCAL_STT_BEAM_SIZE",
            f"local-stt beam size, 1..{MAX_BEAM_SIZE} (1 = greedy: fastest, least accurate)",
            str(_WHISPER_DEFAULTS.beam_size),
        ),
        "threads": Option(
            "LOCAL_STT_THREADS",
            f"local-stt CPU threads, 1..{MAX_THREADS}",
            str(_WHISPER_DEFAULTS.threads),
        ),
        "window_s": Option(
            "LOCAL_STT_WINDOW_S",
            f"local-stt encoder window for an utterance, {MIN_WINDOW_S}..{FULL_WINDOW_S} s "
            f"(shorter is faster; {FULL_WINDOW_S}: Whisper's full window, as faster-whisper "
            "does)",
            str(_WHISPER_DEFAULTS.window_s),
        ),
        "compute_type": Option(
            "LOCAL_STT_COMPUTE_TYPE",
            f"local-stt CTranslate2 compute type: {', '.join(COMPUTE_TYPES)}",
            _WHISPER_DEFAULTS.compute_type,
        ),
        "prompt": Option(
            "LOCAL_STT_PROMPT",
            "local-stt vocabulary prompt (Whisper initial_prompt): a sentence of the domain's "
            "words; unset: the application's own, 'off': none",
        ),
    },
    offline_check=_local_stt_problem,
    local=True,
)
FREE_STT = Provider(
    slot="stt",
    name="free-stt",
    summary="PocketSphinx, in process (basic accuracy, always available)",
    build=_free_stt,
    local=True,
    floor=True,
)
FREE_LLM = Provider(
    slot="llm",
    name="free-llm",
    summary="scripted responder, in process (always available)",
    build=_free_llm,
    local=True,
    floor=True,
)
LOCAL_TTS = Provider(
    slot="tts",
    name="local-tts",
    summary="hibari neural voice, in process (good quality, free)",
    build=_local_tts,
    local=True,
)
FREE_TTS = Provider(
    slot="tts",
    name="free-tts",
    summary="eSpeak NG, in process (robotic, always available)",
    build=_free_tts,
    voice=Option(
        "FREE_TTS_VOICE",
        "eSpeak NG voice of the last-resort TTS: a language code such as en-us, en or de",
        default=DEFAULT_ESPEAK_VOICE,
    ),
    local=True,
    floor=True,
)

PROVIDERS = (LOCAL_STT, FREE_STT, FREE_LLM, LOCAL_TTS, FREE_TTS)
