"""OpenRouter: many models behind one OpenAI-compatible API (the primary LLM)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
from livekit.agents import llm

from plugins.observability.account import CreditReport, get_json, rejected, unexpected
from plugins.providers.definition import (
    BuildContext,
    Option,
    Provider,
    SimOptions,
    SimServer,
    SimulatorHook,
)
from plugins.providers.openai import ERRORS as OPENAI_ERRORS
from plugins.providers.openai import PLUGIN_MODULES as OPENAI_PLUGIN_MODULES
from plugins.providers.openai import chat_kwargs, openai_client
from plugins.providers.openai import preload as openai_preload
from plugins.resilience.headroom import RateLimitSignal
from plugins.resilience.phrases import ErrorPhrases
from plugins.spec import ProviderSpec

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_MODEL = "openai/gpt-4o-mini"
DEFAULT_APP_NAME = "Never Silent Sales Agent"


def _build(spec: ProviderSpec, ctx: BuildContext) -> llm.LLM[Any]:
    from livekit.plugins import openai

    kwargs = chat_kwargs(spec, DEFAULT_MODEL)
    base_url = spec.base_url or DEFAULT_BASE_URL
    return openai.LLM.with_openrouter(
        client=openai_client(spec, ctx, base_url),
        model=kwargs["model"],
        api_key=kwargs["api_key"],
        base_url=base_url,
        site_url=spec.extra.get("app_url") or None,
        app_name=spec.extra.get("app_name") or None,
        **({"temperature": kwargs["temperature"]} if "temperature" in kwargs else {}),
    )


async def _credit(spec: ProviderSpec, http: aiohttp.ClientSession, key: str) -> CreditReport:
    """``GET /key``: the key's credit limit and what is left of it."""
    status, body = await get_json(
        http, f"{LLM.endpoint(spec)}/key", {"Authorization": f"Bearer {key}"}
    )
    if status in (401, 403):
        return rejected(spec, status)
    if status != 200 or not isinstance(body, dict):
        return unexpected(spec, status)
    data = body.get("data") or {}
    limit = data.get("limit")
    remaining = data.get("limit_remaining")
    if remaining is None and limit is not None:
        remaining = float(limit) - float(data.get("usage") or 0.0)
    report = CreditReport(
        spec.key,
        key_ok=True,
        remaining=None if remaining is None else float(remaining),
        limit=None if limit is None else float(limit),
        unit="usd",
    )
    if report.exhausted:
        return replace(report, problem=f"{spec.name}: credit limit reached")
    return report


def _simulator(options: SimOptions) -> SimServer:
    from plugins.sim.openai_sim import OpenAISimulator

    return OpenAISimulator(flavor="openrouter", token_interval_s=0.01, reply=options.reply)


LLM = Provider(
    slot="llm",
    name="openrouter",
    summary="OpenRouter (OpenAI-compatible, many models)",
    build=_build,
    price_per_unit_usd=0.6 / 1e6,
    api_key=Option("OPENROUTER_API_KEY", "OpenRouter API key (primary LLM)", kind="secret"),
    base_url=Option(
        "OPENROUTER_BASE_URL",
        "OpenRouter endpoint override, e.g. https://openrouter.ai/api/v1",
        kind="url",
    ),
    default_base_url=DEFAULT_BASE_URL,
    model=Option("OPENROUTER_MODEL", "OpenRouter model", default=DEFAULT_MODEL),
    options={
        "app_name": Option(
            "OPENROUTER_APP_NAME",
            "App name sent to OpenRouter (X-Title header)",
            default=DEFAULT_APP_NAME,
        ),
        "app_url": Option(
            "OPENROUTER_APP_URL", "App URL sent to OpenRouter (HTTP-Referer header)", kind="url"
        ),
    },
    probe_kwargs={"max_completion_tokens": 1},
    credit=_credit,
    errors=ErrorPhrases(
        quota=(*OPENAI_ERRORS.quota, "insufficient credits", "credit limit", "not enough credits"),
        key=OPENAI_ERRORS.key,
        request=OPENAI_ERRORS.request,
    ),
    simulator=SimulatorHook("openrouter", _simulator),
    plugin_modules=OPENAI_PLUGIN_MODULES,
    preload=openai_preload,
    # only its own 429 carries them (successes carry none): the reset is an epoch in ms
    rate_limits=(
        RateLimitSignal(
            "requests",
            limit="x-ratelimit-limit",
            remaining="x-ratelimit-remaining",
            reset="x-ratelimit-reset",
            reset_kind="window",
        ),
    ),
)

PROVIDERS = (LLM,)
