"""Deepgram: streaming speech-to-text over a WebSocket (the primary STT)."""

from __future__ import annotations

from typing import Any

import aiohttp
from livekit.agents import stt

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
from plugins.providers.shared import STT_LANGUAGE
from plugins.resilience.phrases import ErrorPhrases
from plugins.spec import ProviderSpec

DEFAULT_MODEL = "nova-3"
DEFAULT_BASE_URL = "https://api.deepgram.com/v1/listen"


def _build(spec: ProviderSpec, ctx: BuildContext) -> stt.STT[Any]:
    from livekit.plugins import deepgram

    kwargs: dict[str, Any] = {"model": spec.model or DEFAULT_MODEL, "api_key": spec.api_key}
    if ctx.http_session is not None:
        kwargs["http_session"] = ctx.http_session
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    if language := spec.extra.get("language"):
        kwargs["language"] = language
    return deepgram.STT(**kwargs)


async def _credit(spec: ProviderSpec, http: aiohttp.ClientSession, key: str) -> CreditReport:
    root = STT.endpoint(spec).removesuffix("/listen")
    return await key_check(
        spec,
        http,
        f"{root}/projects",
        {"Authorization": f"Token {key}"},
        out_of_credit_as="out of credit",
    )


def _simulator(options: SimOptions) -> SimServer:
    from plugins.sim.deepgram_sim import DeepgramSimulator

    return DeepgramSimulator()


STT = Provider(
    slot="stt",
    name="deepgram",
    summary="Deepgram streaming speech-to-text (WebSocket)",
    build=_build,
    price_per_unit_usd=0.0043 / 60,
    api_key=Option("DEEPGRAM_API_KEY", "Deepgram API key (primary STT)", kind="secret"),
    base_url=Option(
        "DEEPGRAM_BASE_URL",
        "Deepgram live endpoint override, e.g. https://api.deepgram.com/v1/listen",
        kind="url",
    ),
    default_base_url=DEFAULT_BASE_URL,
    model=Option("DEEPGRAM_MODEL", "Deepgram model", default=DEFAULT_MODEL),
    options={"language": STT_LANGUAGE},
    uses_aiohttp=True,
    credit=_credit,
    errors=ErrorPhrases(quota=("insufficient credits", "ASR_PAYMENT_REQUIRED")),
    simulator=SimulatorHook("deepgram", _simulator),
    plugin_modules=("livekit.plugins.deepgram",),
)

PROVIDERS = (STT,)
