"""Google: Cloud Speech-to-Text (service account) and Gemini (AI Studio key)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
from livekit.agents import llm, stt

from plugins.observability.account import CreditReport, key_check
from plugins.providers.definition import (
    BuildContext,
    Option,
    Provider,
    ProviderUnusableError,
    SimOptions,
    SimServer,
    SimulatorHook,
    extra_float,
)
from plugins.providers.shared import STT_LANGUAGE
from plugins.resilience.phrases import ErrorPhrases
from plugins.spec import ProviderSpec

# -- speech to text ----------------------------------------------------------------------------

DEFAULT_STT_MODEL = "latest_long"
DEFAULT_STT_LOCATION = "global"

API_KEY = Option(
    "GOOGLE_API_KEY",
    "Google AI Studio key (Gemini LLM fallback); STT uses it too when no service account is set",
    kind="secret",
)
CREDENTIALS = Option(
    "GOOGLE_APPLICATION_CREDENTIALS",
    "Path to a Google Cloud service-account JSON file (Google STT; preferred over GOOGLE_API_KEY)",
    kind="file",
)

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


def _is_v2_model(model: str | None) -> bool:
    from typing import get_args

    from livekit.plugins.google.models import SpeechModelsV2

    return model in get_args(SpeechModelsV2)


def _build_stt(spec: ProviderSpec, ctx: BuildContext) -> stt.STT[Any]:
    from google.auth import api_key
    from livekit.plugins import google

    kind, credential = google_stt_auth(spec)
    kwargs: dict[str, Any] = {
        "model": spec.model or DEFAULT_STT_MODEL,
        "location": spec.extra.get("location") or DEFAULT_STT_LOCATION,
    }
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
        if _is_v2_model(kwargs["model"]):
            raise ProviderUnusableError(
                f"{spec.key}: model {kwargs['model']!r} {GOOGLE_STT_V2_NEEDS_PROJECT}"
            )
        kwargs["credentials"] = api_key.Credentials(credential)  # type: ignore[no-untyped-call]
    if spec.base_url:  # a plaintext gRPC target (the simulator): the plugin has no endpoint option
        from plugins.sim.google_stt_sim import SimulatedGoogleSTT

        kwargs.pop("credentials_file", None)
        return SimulatedGoogleSTT(spec.base_url, **kwargs)
    return google.STT(**kwargs)


def check_service_account(spec: ProviderSpec) -> str | None:
    """What is wrong with the credential STT will use, read offline (None: it looks valid)."""
    kind, credential = google_stt_auth(spec)
    if kind == "api-key":
        if _is_v2_model(spec.model):
            return f"GOOGLE_STT_MODEL {spec.model!r} {GOOGLE_STT_V2_NEEDS_PROJECT}"
        return None
    path = Path(credential)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"cannot read {path} as JSON ({type(e).__name__}); download the key file again"
    missing = [k for k in ("type", "client_email", "private_key") if not data.get(k)]
    if data.get("type") not in (None, "service_account") or missing:
        return f"{path} is not a service-account key (missing {', '.join(missing) or 'type'})"
    return None


def _stt_simulator(options: SimOptions) -> SimServer:
    from plugins.sim.google_stt_sim import GoogleSttSimulator

    return GoogleSttSimulator()


STT = Provider(
    slot="stt",
    name="google",
    summary="Google Cloud Speech-to-Text, streaming (gRPC; service account or API key)",
    build=_build_stt,
    price_per_unit_usd=0.016 / 60,
    api_key=API_KEY,
    base_url=Option(
        "GOOGLE_STT_TARGET",
        "host:port of a plaintext gRPC Speech endpoint (the simulator); unset: Google itself",
    ),
    model=Option("GOOGLE_STT_MODEL", "Google STT model", default=DEFAULT_STT_MODEL),
    options={
        "credentials_file": CREDENTIALS,
        "language": STT_LANGUAGE,
        "location": Option(
            "GOOGLE_STT_LOCATION",
            "Google STT region: global, or a region such as us-central1 or eu",
            default=DEFAULT_STT_LOCATION,
        ),
    },
    key_help="GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_API_KEY",
    usable=lambda spec: bool(spec.extra.get("credentials_file") or (spec.api_key or "").strip()),
    offline_check=check_service_account,
    # a gRPC host:port, and the API key it shares with Gemini
    simulator=SimulatorHook(
        "google-stt",
        _stt_simulator,
        settings=lambda url, key: {"GOOGLE_STT_TARGET": url, "GOOGLE_API_KEY": key},
    ),
    plugin_modules=("livekit.plugins.google",),
)

# -- language model ----------------------------------------------------------------------------

DEFAULT_LLM_MODEL = "gemini-2.5-flash"
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"


def _build_llm(spec: ProviderSpec, ctx: BuildContext) -> llm.LLM[Any]:
    from google.genai import types
    from livekit.plugins import google

    kwargs: dict[str, Any] = {
        "model": spec.model or DEFAULT_LLM_MODEL,
        "api_key": spec.api_key,
        "vertexai": False,
    }
    if spec.base_url:
        kwargs["http_options"] = types.HttpOptions(base_url=spec.base_url)
    if (temperature := extra_float(spec, "temperature")) is not None:
        kwargs["temperature"] = temperature
    return google.LLM(**kwargs)


async def _credit(spec: ProviderSpec, http: aiohttp.ClientSession, key: str) -> CreditReport:
    url = f"{LLM.endpoint(spec)}/v1beta/models"
    # Gemini answers an invalid key with 400 API_KEY_INVALID
    return await key_check(
        spec, http, url, {"x-goog-api-key": key}, rejected_statuses=(400, 401, 403)
    )


def _simulator(options: SimOptions) -> SimServer:
    from plugins.sim.gemini_sim import GeminiSimulator

    return GeminiSimulator(reply=options.reply)


LLM = Provider(
    slot="llm",
    name="google",
    summary="Google Gemini through the AI Studio API",
    build=_build_llm,
    price_per_unit_usd=0.4 / 1e6,
    api_key=API_KEY,
    base_url=Option("GOOGLE_BASE_URL", "Gemini endpoint override", kind="url"),
    default_base_url=DEFAULT_BASE_URL,
    model=Option("GOOGLE_LLM_MODEL", "Gemini model", default=DEFAULT_LLM_MODEL),
    credit=_credit,
    errors=ErrorPhrases(
        # Gemini says "exceeded your current quota" for daily and per-minute quotas alike;
        # the quota id tells them apart
        quota=("exceeded your current quota", "PerDay"),
        rate_window=("PerMinute",),
        daily=("PerDay",),
        key=("api key not valid", "API_KEY_INVALID", "PERMISSION_DENIED", "UNAUTHENTICATED"),
        request=("safety", "blocked", "prompt_feedback"),
    ),
    simulator=SimulatorHook("gemini", _simulator),
    plugin_modules=("livekit.plugins.google",),
)

PROVIDERS = (STT, LLM)
