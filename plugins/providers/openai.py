"""OpenAI: the chat LLM and Whisper speech-to-text, sharing one key and one base URL.

Any OpenAI-compatible server (a proxy, a self-hosted model) is reached by setting the base URL.
"""

from __future__ import annotations

import functools
import importlib
import ssl
from typing import Any

import aiohttp
from livekit.agents import llm, stt

from plugins.observability.account import (
    CreditReport,
    get_json,
    out_of_credit,
    rejected,
    unexpected,
)
from plugins.providers.definition import (
    BuildContext,
    Option,
    Provider,
    SimOptions,
    SimServer,
    SimulatorHook,
    extra_float,
)
from plugins.providers.shared import STT_LANGUAGE
from plugins.resilience.headroom import RateLimitSignal
from plugins.resilience.phrases import ErrorPhrases
from plugins.spec import ProviderSpec

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_LLM_MODEL = "gpt-4o-mini"
DEFAULT_STT_MODEL = "whisper-1"

API_KEY = Option("OPENAI_API_KEY", "OpenAI API key (LLM fallback and Whisper STT)", kind="secret")
BASE_URL = Option(
    "OPENAI_BASE_URL",
    "OpenAI endpoint override (any OpenAI-compatible server), e.g. https://api.openai.com/v1",
    kind="url",
)
#: What OpenAI and servers that copy its API say; OpenRouter relays the same words.
ERRORS = ErrorPhrases(
    quota=("insufficient_quota", "exceeded your current quota", "billing"),
    key=("invalid_api_key", "incorrect api key"),
    request=(
        "context_length_exceeded",
        "maximum context length",
        "content_filter",
        "content_policy",
        "string_above_max_length",
    ),
)


#: OpenAI's rate-limit headers, on every response: the reset is the time until the limit is
#: full again ("1s", "6m0s"), refilling meanwhile (platform.openai.com/docs/guides/rate-limits).
RATE_LIMITS = (
    RateLimitSignal(
        "requests",
        limit="x-ratelimit-limit-requests",
        remaining="x-ratelimit-remaining-requests",
        reset="x-ratelimit-reset-requests",
    ),
    RateLimitSignal(
        "tokens",
        limit="x-ratelimit-limit-tokens",
        remaining="x-ratelimit-remaining-tokens",
        reset="x-ratelimit-reset-tokens",
        per_request=False,
    ),
)


@functools.cache
def _tls() -> ssl.SSLContext:
    import httpx2

    return httpx2.create_ssl_context()


def openai_client(spec: ProviderSpec, ctx: BuildContext, default_base_url: str) -> Any:
    """An OpenAI SDK client like the plugin's own, plus the tap's response hook (or None).

    Its TLS settings are one context per process, made where the worker imports its plugins:
    loading the CA bundle costs about 25 ms of CPU per client, which every call would pay."""
    if ctx.tap is None:
        return None
    import httpx2
    import openai as openai_sdk

    return openai_sdk.AsyncClient(
        api_key=spec.api_key,
        base_url=spec.base_url or default_base_url,
        max_retries=0,
        http_client=httpx2.AsyncClient(
            verify=_tls(),
            timeout=httpx2.Timeout(connect=15.0, read=5.0, write=5.0, pool=5.0),
            follow_redirects=True,
            limits=httpx2.Limits(
                max_connections=50, max_keepalive_connections=50, keepalive_expiry=120
            ),
            event_hooks={"response": [ctx.tap.httpx_hook()]},
        ),
    )


def chat_kwargs(spec: ProviderSpec, default_model: str) -> dict[str, Any]:
    """The chat options every OpenAI-compatible LLM takes from a spec."""
    kwargs: dict[str, Any] = {"model": spec.model or default_model, "api_key": spec.api_key}
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    if (temperature := extra_float(spec, "temperature")) is not None:
        kwargs["temperature"] = temperature
    return kwargs


def _build_llm(spec: ProviderSpec, ctx: BuildContext) -> llm.LLM[Any]:
    from livekit.plugins import openai

    client = openai_client(spec, ctx, DEFAULT_BASE_URL)
    return openai.LLM(**chat_kwargs(spec, DEFAULT_LLM_MODEL), client=client)


def _build_stt(spec: ProviderSpec, ctx: BuildContext) -> stt.STT[Any]:
    from livekit.plugins import openai

    kwargs: dict[str, Any] = {
        "model": spec.model or DEFAULT_STT_MODEL,
        "api_key": spec.api_key,
        "use_realtime": False,
    }
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    if language := spec.extra.get("language"):
        kwargs["language"] = language.split("-")[0]  # Whisper takes ISO-639-1: en-US -> en
    if (client := openai_client(spec, ctx, DEFAULT_BASE_URL)) is not None:
        kwargs["client"] = client
    return openai.STT(**kwargs)


async def check_models(spec: ProviderSpec, http: aiohttp.ClientSession, key: str) -> CreditReport:
    """``GET /models``: OpenAI has no credit API, but a dead key or quota shows here."""
    base = (spec.base_url or DEFAULT_BASE_URL).rstrip("/")
    status, body = await get_json(http, f"{base}/models", {"Authorization": f"Bearer {key}"})
    if status in (401, 403):
        return rejected(spec, status)
    error = (body.get("error") or {}) if isinstance(body, dict) else {}
    if status == 429 and error.get("code") == "insufficient_quota":
        return out_of_credit(spec, "quota exhausted; add credit")
    if status != 200:
        return unexpected(spec, status)
    return CreditReport(spec.key, key_ok=True)


def _simulator(options: SimOptions) -> SimServer:
    from plugins.sim.openai_sim import OpenAISimulator

    return OpenAISimulator(flavor="openai", token_interval_s=0.01, reply=options.reply)


SIMULATOR = SimulatorHook("openai", _simulator)
PLUGIN_MODULES = ("livekit.plugins.openai",)


def preload() -> None:
    """What the OpenAI SDK does on first use, done before the worker forks: its chat resources
    (about 0.1 s of CPU building their pydantic stream types) and our clients' TLS context."""
    importlib.import_module("openai.resources.chat.chat")
    _tls()


LLM = Provider(
    slot="llm",
    name="openai",
    summary="OpenAI chat completions (or any OpenAI-compatible server)",
    build=_build_llm,
    price_per_unit_usd=0.6 / 1e6,
    api_key=API_KEY,
    base_url=BASE_URL,
    default_base_url=DEFAULT_BASE_URL,
    model=Option("OPENAI_MODEL", "OpenAI chat model", default=DEFAULT_LLM_MODEL),
    probe_kwargs={"max_completion_tokens": 1},
    credit=check_models,
    errors=ERRORS,
    simulator=SIMULATOR,
    plugin_modules=PLUGIN_MODULES,
    preload=preload,
    rate_limits=RATE_LIMITS,
)

WHISPER = Provider(
    slot="stt",
    name="whisper",
    summary="OpenAI Whisper transcription (non-streaming: wrapped with the VAD)",
    build=_build_stt,
    price_per_unit_usd=0.006 / 60,
    api_key=API_KEY,
    base_url=BASE_URL,
    default_base_url=DEFAULT_BASE_URL,
    model=Option(
        "WHISPER_MODEL", "Whisper model on the OpenAI API (uses OPENAI_API_KEY)", DEFAULT_STT_MODEL
    ),
    options={"language": STT_LANGUAGE},
    credit=check_models,
    errors=ERRORS,
    simulator=SIMULATOR,
    plugin_modules=PLUGIN_MODULES,
    preload=preload,
    rate_limits=RATE_LIMITS,
)

PROVIDERS = (WHISPER, LLM)
