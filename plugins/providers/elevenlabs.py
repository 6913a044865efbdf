"""ElevenLabs: premium text-to-speech, streamed over a WebSocket (the cloud voice fallback)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import aiohttp
from livekit.agents import tts

from plugins.observability.account import (
    CreditReport,
    get_json,
    out_of_credit,
    rejected,
    reset_time,
    unexpected,
)
from plugins.providers.definition import (
    BuildContext,
    Option,
    Provider,
    SimOptions,
    SimServer,
    SimulatorHook,
)
from plugins.resilience.phrases import ErrorPhrases
from plugins.spec import ProviderSpec

DEFAULT_BASE_URL = "https://api.elevenlabs.io/v1"
DEFAULT_MODEL = "eleven_flash_v2_5"  # ElevenLabs' lowest-latency model, made for agents
DEFAULT_VOICE = "EXAVITQu4vr4xnVDxPzn"


def _build(spec: ProviderSpec, ctx: BuildContext) -> tts.TTS[Any]:
    from livekit.plugins import elevenlabs

    kwargs: dict[str, Any] = {
        "model": spec.model or DEFAULT_MODEL,
        "voice_id": spec.voice or DEFAULT_VOICE,
        "api_key": spec.api_key,
    }
    if ctx.http_session is not None:
        kwargs["http_session"] = ctx.http_session
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    return elevenlabs.TTS(**kwargs)


async def _credit(spec: ProviderSpec, http: aiohttp.ClientSession, key: str) -> CreditReport:
    """``GET /user/subscription``: characters left this period and when they reset."""
    status, body = await get_json(
        http, f"{TTS.endpoint(spec)}/user/subscription", {"xi-api-key": key}
    )
    if status in (401, 403):
        detail = (body or {}).get("detail") if isinstance(body, dict) else None
        if isinstance(detail, dict) and detail.get("status") == "quota_exceeded":
            return out_of_credit(spec, "quota exhausted")
        return rejected(spec, status)
    if status != 200 or not isinstance(body, dict):
        return unexpected(spec, status)
    limit = float(body.get("character_limit") or 0)
    used = float(body.get("character_count") or 0)
    reset = body.get("next_character_count_reset_unix")
    report = CreditReport(
        spec.key,
        key_ok=True,
        remaining=max(limit - used, 0.0),
        limit=limit,
        unit="characters",
        reset_at=reset_time(reset),
    )
    if report.exhausted:
        when = (
            time.strftime(" until %Y-%m-%d %H:%M UTC", time.gmtime(report.reset_at))
            if report.reset_at
            else ""
        )
        return replace(report, problem=f"{spec.name}: character quota used up{when}")
    return report


def _simulator(options: SimOptions) -> SimServer:
    from plugins.sim.elevenlabs_sim import ElevenLabsSimulator

    return ElevenLabsSimulator()


TTS = Provider(
    slot="tts",
    name="elevenlabs",
    summary="ElevenLabs text-to-speech (WebSocket streaming)",
    build=_build,
    price_per_unit_usd=0.00018,
    api_key=Option(
        "ELEVENLABS_API_KEY", "ElevenLabs API key (premium fallback voice)", kind="secret"
    ),
    base_url=Option(
        "ELEVENLABS_BASE_URL",
        "ElevenLabs endpoint override, e.g. https://api.elevenlabs.io/v1",
        kind="url",
    ),
    default_base_url=DEFAULT_BASE_URL,
    model=Option("ELEVENLABS_MODEL", "ElevenLabs model", default=DEFAULT_MODEL),
    voice=Option("ELEVENLABS_VOICE", "ElevenLabs voice id", default=DEFAULT_VOICE),
    uses_aiohttp=True,
    credit=_credit,
    errors=ErrorPhrases(
        # its 401 means a bad key *or* used-up characters; the body's status tells which
        quota=("quota_exceeded", "exceeds your quota", "character_limit"),
        key=("invalid_api_key",),
        request=("text too long",),
    ),
    simulator=SimulatorHook("elevenlabs", _simulator),
    plugin_modules=("livekit.plugins.elevenlabs",),
)

PROVIDERS = (TTS,)
