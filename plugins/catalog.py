"""Every provider the chains know: how to build its LiveKit plugin from a :class:`ProviderSpec`.

One entry per (slot, name). An entry knows whether the provider needs a key (and so is skipped
without one), whether it is local (no network: always last, always present), whether its
plugin streams, the unit it is billed in and a default list price used when settings give
none. Plugin modules are imported only when an entry is built, so a missing optional plugin
breaks only the provider that uses it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from livekit.agents import llm, stt, tts

from plugins.local.responder import Responder
from plugins.resilience.guard import UNIT_LLM, UNIT_STT, UNIT_TTS
from plugins.resilience.response_tap import ResponseTap
from plugins.spec import FLOOR_PROVIDER, KNOWN_PROVIDERS, ProviderSpec, Slot

Plugin = stt.STT[Any] | llm.LLM[Any] | tts.TTS[Any]


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use besides the spec.

    ``http_session``: for aiohttp-based plugins, a session the chain traces (to read the
    headers of error responses); None lets the plugin use LiveKit's job-wide session.
    """

    http_session: aiohttp.ClientSession | None = None
    tap: ResponseTap | None = None  # OpenAI-SDK plugins: our client reports error responses
    responder: Responder | None = None  # what free-llm says: the application's, if it has one


def _openai_client(spec: ProviderSpec, ctx: BuildContext, default_base_url: str) -> Any:
    """An OpenAI SDK client like the plugin's own, plus the tap's response hook (or None)."""
    if ctx.tap is None:
        return None
    import httpx2
    import openai as openai_sdk

    return openai_sdk.AsyncClient(
        api_key=spec.api_key,
        base_url=spec.base_url or default_base_url,
        max_retries=0,
        http_client=httpx2.AsyncClient(
            timeout=httpx2.Timeout(connect=15.0, read=5.0, write=5.0, pool=5.0),
            follow_redirects=True,
            limits=httpx2.Limits(
                max_connections=50, max_keepalive_connections=50, keepalive_expiry=120
            ),
            event_hooks={"response": [ctx.tap.httpx_hook()]},
        ),
    )


class ProviderUnusableError(ValueError):
    """The spec cannot build this provider (missing key or credentials, bad option)."""


@dataclass(frozen=True)
class CatalogEntry:
    slot: Slot
    name: str
    build: Callable[[ProviderSpec, BuildContext], Plugin]
    needs_key: bool
    is_local: bool
    streaming: bool
    cost_unit: str
    price_per_unit_usd: float  # default list price; settings may override
    key_hint: str = ""  # the setting that enables it, for the one "skipped" log line
    probe_kwargs: dict[str, Any] = field(default_factory=dict)  # LLM: keep the probe to 1 token

    @property
    def uses_aiohttp(self) -> bool:
        return self.key in _AIOHTTP_PLUGINS

    @property
    def key(self) -> str:
        return f"{self.slot}:{self.name}"


def _extra_float(spec: ProviderSpec, name: str) -> float | None:
    value = spec.extra.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise ProviderUnusableError(
            f"{spec.key}: extra option {name}={value!r} is not a number"
        ) from None


# -- STT -------------------------------------------------------------------------------------


def _deepgram_stt(spec: ProviderSpec, ctx: BuildContext) -> stt.STT[Any]:
    from livekit.plugins import deepgram

    kwargs: dict[str, Any] = {"model": spec.model or "nova-3", "api_key": spec.api_key}
    if ctx.http_session is not None:
        kwargs["http_session"] = ctx.http_session
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    if language := spec.extra.get("language"):
        kwargs["language"] = language
    return deepgram.STT(**kwargs)


#: Speech-to-Text v2 addresses a recognizer inside a project, which an API key does not name.
GOOGLE_STT_V2_NEEDS_PROJECT = (
    "is a Speech-to-Text v2 model, which needs a service account "
    "(GOOGLE_APPLICATION_CREDENTIALS); use a v1 model such as latest_long with GOOGLE_API_KEY"
)


def google_stt_auth(spec: ProviderSpec) -> tuple[str, str]:
    """("service-account", file) or ("api-key", key) for Google STT, the file first.

    Speech-to-Text v1 accepts an API key (``x-goog-api-key``) where the key's project has the
    API enabled; the LiveKit plugin takes it through its public ``credentials`` argument.
    """
    if file := spec.extra.get("credentials_file"):
        return "service-account", file
    if spec.api_key and spec.api_key.strip():
        return "api-key", spec.api_key
    raise ProviderUnusableError(
        f"{spec.key}: needs a service-account file (GOOGLE_APPLICATION_CREDENTIALS) "
        "or an API key with Speech-to-Text enabled (GOOGLE_API_KEY)"
    )


def _google_stt(spec: ProviderSpec, ctx: BuildContext) -> stt.STT[Any]:
    from typing import get_args

    from google.auth import api_key
    from livekit.plugins import google
    from livekit.plugins.google.models import SpeechModelsV2

    kind, credential = google_stt_auth(spec)
    kwargs: dict[str, Any] = {}
    if spec.model:
        kwargs["model"] = spec.model
    if language := spec.extra.get("language"):
        kwargs["languages"] = language
    if kind == "service-account":
        if not os.path.isfile(credential):
            raise ProviderUnusableError(
                f"{spec.key}: service-account credentials file {credential!r} not found "
                "(GOOGLE_APPLICATION_CREDENTIALS)"
            )
        kwargs["credentials_file"] = credential
    else:
        if spec.model in get_args(SpeechModelsV2):
            raise ProviderUnusableError(
                f"{spec.key}: model {spec.model!r} {GOOGLE_STT_V2_NEEDS_PROJECT}"
            )
        kwargs["credentials"] = api_key.Credentials(credential)  # type: ignore[no-untyped-call]
    if spec.base_url:  # a plaintext gRPC target (the simulator): the plugin has no endpoint option
        from plugins.sim.google_stt_sim import SimulatedGoogleSTT

        kwargs.pop("credentials_file", None)
        return SimulatedGoogleSTT(spec.base_url, **kwargs)
    return google.STT(**kwargs)


def _whisper_stt(spec: ProviderSpec, ctx: BuildContext) -> stt.STT[Any]:
    from livekit.plugins import openai

    kwargs: dict[str, Any] = {
        "model": spec.model or "whisper-1",
        "api_key": spec.api_key,
        "use_realtime": False,
    }
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    if language := spec.extra.get("language"):
        kwargs["language"] = language
    if (client := _openai_client(spec, ctx, "https://api.openai.com/v1")) is not None:
        kwargs["client"] = client
    return openai.STT(**kwargs)


def _free_stt(spec: ProviderSpec, ctx: BuildContext) -> stt.STT[Any]:
    from plugins.local.sphinx_stt import SphinxSTT

    return SphinxSTT()


# -- LLM -------------------------------------------------------------------------------------


def _openai_kwargs(spec: ProviderSpec, default_model: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model": spec.model or default_model, "api_key": spec.api_key}
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    if (temperature := _extra_float(spec, "temperature")) is not None:
        kwargs["temperature"] = temperature
    return kwargs


def _openrouter_llm(spec: ProviderSpec, ctx: BuildContext) -> llm.LLM[Any]:
    from livekit.plugins import openai

    kwargs = _openai_kwargs(spec, "openai/gpt-4o-mini")
    base_url = spec.base_url or "https://openrouter.ai/api/v1"
    return openai.LLM.with_openrouter(
        client=_openai_client(spec, ctx, base_url),
        model=kwargs["model"],
        api_key=kwargs["api_key"],
        base_url=base_url,
        site_url=spec.extra.get("app_url") or None,
        app_name=spec.extra.get("app_name") or None,
        **({"temperature": kwargs["temperature"]} if "temperature" in kwargs else {}),
    )


def _openai_llm(spec: ProviderSpec, ctx: BuildContext) -> llm.LLM[Any]:
    from livekit.plugins import openai

    client = _openai_client(spec, ctx, "https://api.openai.com/v1")
    return openai.LLM(**_openai_kwargs(spec, "gpt-4o-mini"), client=client)


def _google_llm(spec: ProviderSpec, ctx: BuildContext) -> llm.LLM[Any]:
    from google.genai import types
    from livekit.plugins import google

    kwargs: dict[str, Any] = {
        "model": spec.model or "gemini-2.5-flash",
        "api_key": spec.api_key,
        "vertexai": False,
    }
    if spec.base_url:
        kwargs["http_options"] = types.HttpOptions(base_url=spec.base_url)
    if (temperature := _extra_float(spec, "temperature")) is not None:
        kwargs["temperature"] = temperature
    return google.LLM(**kwargs)


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


# -- TTS -------------------------------------------------------------------------------------


def _cartesia_tts(spec: ProviderSpec, ctx: BuildContext) -> tts.TTS[Any]:
    from livekit.plugins import cartesia

    kwargs: dict[str, Any] = {"model": spec.model or "sonic-2", "api_key": spec.api_key}
    if ctx.http_session is not None:
        kwargs["http_session"] = ctx.http_session
    if spec.voice:
        kwargs["voice"] = spec.voice
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    return cartesia.TTS(**kwargs)


def _elevenlabs_tts(spec: ProviderSpec, ctx: BuildContext) -> tts.TTS[Any]:
    from livekit.plugins import elevenlabs

    kwargs: dict[str, Any] = {"model": spec.model or "eleven_turbo_v2_5", "api_key": spec.api_key}
    if ctx.http_session is not None:
        kwargs["http_session"] = ctx.http_session
    if spec.voice:
        kwargs["voice_id"] = spec.voice
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    return elevenlabs.TTS(**kwargs)


def _local_tts(spec: ProviderSpec, ctx: BuildContext) -> tts.TTS[Any]:
    from plugins.local.hibari_tts import HibariTTS

    speed = _extra_float(spec, "speed")
    return HibariTTS(speed=speed) if speed is not None else HibariTTS()


def _free_tts(spec: ProviderSpec, ctx: BuildContext) -> tts.TTS[Any]:
    from plugins.local.espeak_tts import EspeakTTS

    return EspeakTTS(voice=spec.voice) if spec.voice else EspeakTTS()


# -- the table -------------------------------------------------------------------------------

_ENTRIES = [
    CatalogEntry("stt", "deepgram", _deepgram_stt, True, False, True, UNIT_STT, 0.0043 / 60, "DEEPGRAM_API_KEY"),
    CatalogEntry("stt", "google", _google_stt, True, False, True, UNIT_STT, 0.016 / 60, "GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_API_KEY"),
    CatalogEntry("stt", "whisper", _whisper_stt, True, False, False, UNIT_STT, 0.006 / 60, "OPENAI_API_KEY"),
    CatalogEntry("stt", "free-stt", _free_stt, False, True, True, UNIT_STT, 0.0),
    CatalogEntry(
        "llm", "openrouter", _openrouter_llm, True, False, True, UNIT_LLM, 0.6 / 1e6,
        "OPENROUTER_API_KEY", {"max_completion_tokens": 1},
    ),
    CatalogEntry(
        "llm", "openai", _openai_llm, True, False, True, UNIT_LLM, 0.6 / 1e6,
        "OPENAI_API_KEY", {"max_completion_tokens": 1},
    ),
    CatalogEntry("llm", "google", _google_llm, True, False, True, UNIT_LLM, 0.4 / 1e6, "GOOGLE_API_KEY"),
    CatalogEntry("llm", "free-llm", _free_llm, False, True, True, UNIT_LLM, 0.0),
    CatalogEntry("tts", "cartesia", _cartesia_tts, True, False, True, UNIT_TTS, 0.000038, "CARTESIA_API_KEY"),
    CatalogEntry("tts", "local-tts", _local_tts, False, True, True, UNIT_TTS, 0.0),
    CatalogEntry("tts", "elevenlabs", _elevenlabs_tts, True, False, True, UNIT_TTS, 0.00018, "ELEVENLABS_API_KEY"),
    CatalogEntry("tts", "free-tts", _free_tts, False, True, True, UNIT_TTS, 0.0),
]  # fmt: skip

_AIOHTTP_PLUGINS = frozenset({"stt:deepgram", "tts:cartesia", "tts:elevenlabs"})

CATALOG: dict[str, CatalogEntry] = {e.key: e for e in _ENTRIES}

#: The default order of each chain (the design's hierarchy) and the local provider that ends
#: each chain when the spec list leaves it out: defined once, in plugins.spec.
DEFAULT_ORDER: dict[Slot, tuple[str, ...]] = KNOWN_PROVIDERS
FLOOR: dict[Slot, str] = FLOOR_PROVIDER


def entry_for(spec: ProviderSpec) -> CatalogEntry:
    try:
        return CATALOG[spec.key]
    except KeyError:
        known = ", ".join(n for (s, n) in (k.split(":", 1) for k in CATALOG) if s == spec.slot)
        raise ProviderUnusableError(
            f"unknown {spec.slot} provider {spec.name!r}: choose one of {known}"
        ) from None


def has_key(entry: CatalogEntry, spec: ProviderSpec) -> bool:
    if not entry.needs_key:
        return True
    if entry.key == "stt:google":
        return bool(spec.extra.get("credentials_file") or (spec.api_key or "").strip())
    return bool(spec.api_key and spec.api_key.strip())
