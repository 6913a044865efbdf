"""Cartesia: streaming text-to-speech over a WebSocket (the primary voice)."""

from __future__ import annotations

from typing import Any

import aiohttp
from livekit.agents import tts

from plugins.observability.account import (
    CreditReport,
    key_check,
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

DEFAULT_BASE_URL = "https://api.cartesia.ai"
DEFAULT_MODEL = "sonic-2"
DEFAULT_VOICE = "794f9389-aac1-45b6-b726-9d9369183238"
API_VERSION = "2024-11-13"


def _build(spec: ProviderSpec, ctx: BuildContext) -> tts.TTS[Any]:
    from livekit.plugins import cartesia

    kwargs: dict[str, Any] = {
        "model": spec.model or DEFAULT_MODEL,
        "voice": spec.voice or DEFAULT_VOICE,
        "api_key": spec.api_key,
    }
    if ctx.http_session is not None:
        kwargs["http_session"] = ctx.http_session
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    return cartesia.TTS(**kwargs)


async def _credit(spec: ProviderSpec, http: aiohttp.ClientSession, key: str) -> CreditReport:
    return await key_check(
        spec,
        http,
        f"{TTS.endpoint(spec)}/voices",
        {"X-API-Key": key, "Cartesia-Version": API_VERSION},
        out_of_credit_as="out of credits",
    )


def _simulator(options: SimOptions) -> SimServer:
    from plugins.sim.cartesia_sim import CartesiaSimulator

    return CartesiaSimulator()


TTS = Provider(
    slot="tts",
    name="cartesia",
    summary="Cartesia Sonic streaming text-to-speech (WebSocket)",
    build=_build,
    price_per_unit_usd=0.000038,
    api_key=Option("CARTESIA_API_KEY", "Cartesia API key (primary voice)", kind="secret"),
    base_url=Option(
        "CARTESIA_BASE_URL",
        "Cartesia endpoint override (proxy, region, or a simulator such as http://127.0.0.1:9003)",
        kind="url",
    ),
    default_base_url=DEFAULT_BASE_URL,
    model=Option("CARTESIA_MODEL", "Cartesia model", default=DEFAULT_MODEL),
    voice=Option("CARTESIA_VOICE", "Cartesia voice id", default=DEFAULT_VOICE),
    uses_aiohttp=True,
    credit=_credit,
    errors=ErrorPhrases(quota=("out of credits", "insufficient credits")),  # HTTP; WebSocket
    simulator=SimulatorHook("cartesia", _simulator),
    plugin_modules=("livekit.plugins.cartesia",),
)

PROVIDERS = (TTS,)
