"""Ask a provider whether our key works and how much credit is left.

Used by ``doctor`` (once, to say what is wrong) and by the background credit reader (to show
remaining quota and to learn a quota's reset time before a 402 teaches it the hard way). Each
check is one cheap, read-only request to the provider's account API; none spends credit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from plugins.resilience.retry_after import bounded_reset_at
from plugins.spec import ProviderSpec

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "whisper": "https://api.openai.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "elevenlabs": "https://api.elevenlabs.io/v1",
    "cartesia": "https://api.cartesia.ai",
    "deepgram": "https://api.deepgram.com/v1/listen",
    "google": "https://generativelanguage.googleapis.com",
}


@dataclass(frozen=True)
class CreditReport:
    key: str  # ProviderSpec.key
    key_ok: bool | None  # None: could not tell (network, unexpected answer)
    problem: str | None = None  # one line for the operator, never the key itself
    remaining: float | None = None
    limit: float | None = None
    unit: str = ""
    reset_at: float | None = None  # epoch seconds

    @property
    def exhausted(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


Check = Callable[[ProviderSpec, aiohttp.ClientSession, str], Awaitable[CreditReport]]


def mask(secret: str | None) -> str:
    """``sk-…a1b2``: enough to tell two keys apart, never enough to use one."""
    if not secret:
        return "(not set)"
    if len(secret) <= 8:
        return "…" + "*" * 4
    return f"{secret[:3]}…{secret[-4:]}"


def _base(spec: ProviderSpec) -> str:
    return (spec.base_url or DEFAULT_BASE_URLS[spec.name]).rstrip("/")


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as resp:
        try:
            body: Any = await resp.json(content_type=None)
        except ValueError:
            body = None
        return resp.status, body


def _rejected(spec: ProviderSpec, status: int) -> CreditReport:
    return CreditReport(
        spec.key,
        key_ok=False,
        problem=f"{spec.name}: key {mask(spec.api_key)} was rejected ({status}); "
        f"check the key in your provider dashboard and update it",
    )


def _unexpected(spec: ProviderSpec, status: int) -> CreditReport:
    return CreditReport(
        spec.key, key_ok=None, problem=f"{spec.name}: account API answered {status}; try later"
    )


async def _check_openai(spec: ProviderSpec, http: aiohttp.ClientSession, k: str) -> CreditReport:
    status, body = await _get(http, f"{_base(spec)}/models", {"Authorization": f"Bearer {k}"})
    if status in (401, 403):
        return _rejected(spec, status)
    if status == 429 and isinstance(body, dict):
        code = (body.get("error") or {}).get("code")
        if code == "insufficient_quota":
            return CreditReport(
                spec.key, True, f"{spec.name}: quota exhausted; add credit", remaining=0.0
            )
    if status != 200:
        return _unexpected(spec, status)
    return CreditReport(spec.key, key_ok=True)


async def _check_openrouter(
    spec: ProviderSpec, http: aiohttp.ClientSession, k: str
) -> CreditReport:
    status, body = await _get(http, f"{_base(spec)}/key", {"Authorization": f"Bearer {k}"})
    if status in (401, 403):
        return _rejected(spec, status)
    if status != 200 or not isinstance(body, dict):
        return _unexpected(spec, status)
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


async def _check_elevenlabs(
    spec: ProviderSpec, http: aiohttp.ClientSession, k: str
) -> CreditReport:
    status, body = await _get(http, f"{_base(spec)}/user/subscription", {"xi-api-key": k})
    if status in (401, 403):
        detail = (body or {}).get("detail") if isinstance(body, dict) else None
        if isinstance(detail, dict) and detail.get("status") == "quota_exceeded":
            return CreditReport(spec.key, True, f"{spec.name}: quota exhausted", remaining=0.0)
        return _rejected(spec, status)
    if status != 200 or not isinstance(body, dict):
        return _unexpected(spec, status)
    limit = float(body.get("character_limit") or 0)
    used = float(body.get("character_count") or 0)
    reset = body.get("next_character_count_reset_unix")
    report = CreditReport(
        spec.key,
        key_ok=True,
        remaining=max(limit - used, 0.0),
        limit=limit,
        unit="characters",
        reset_at=_reset_at(reset),
    )
    if report.exhausted:
        when = (
            time.strftime(" until %Y-%m-%d %H:%M UTC", time.gmtime(report.reset_at))
            if report.reset_at
            else ""
        )
        return replace(report, problem=f"{spec.name}: character quota used up{when}")
    return report


async def _check_deepgram(spec: ProviderSpec, http: aiohttp.ClientSession, k: str) -> CreditReport:
    root = _base(spec).removesuffix("/listen")
    status, _ = await _get(http, f"{root}/projects", {"Authorization": f"Token {k}"})
    if status in (401, 403):
        return _rejected(spec, status)
    if status == 402:
        return CreditReport(spec.key, True, f"{spec.name}: out of credit", remaining=0.0)
    if status != 200:
        return _unexpected(spec, status)
    return CreditReport(spec.key, key_ok=True)


async def _check_cartesia(spec: ProviderSpec, http: aiohttp.ClientSession, k: str) -> CreditReport:
    status, _ = await _get(
        http, f"{_base(spec)}/voices", {"X-API-Key": k, "Cartesia-Version": "2024-11-13"}
    )
    if status in (401, 403):
        return _rejected(spec, status)
    if status == 402:
        return CreditReport(spec.key, True, f"{spec.name}: out of credits", remaining=0.0)
    if status != 200:
        return _unexpected(spec, status)
    return CreditReport(spec.key, key_ok=True)


async def _check_gemini(spec: ProviderSpec, http: aiohttp.ClientSession, k: str) -> CreditReport:
    status, _ = await _get(http, f"{_base(spec)}/v1beta/models", {"x-goog-api-key": k})
    if status in (400, 401, 403):  # Gemini answers an invalid key with 400 API_KEY_INVALID
        return _rejected(spec, status)
    if status != 200:
        return _unexpected(spec, status)
    return CreditReport(spec.key, key_ok=True)


CHECKS: dict[str, Check] = {
    "llm:openai": _check_openai,
    "stt:whisper": _check_openai,
    "llm:openrouter": _check_openrouter,
    "llm:google": _check_gemini,
    "tts:elevenlabs": _check_elevenlabs,
    "tts:cartesia": _check_cartesia,
    "stt:deepgram": _check_deepgram,
}


async def check_credit(
    spec: ProviderSpec, http: aiohttp.ClientSession, *, timeout_s: float = 5.0
) -> CreditReport | None:
    """One provider's key and credit; ``None`` if the provider has no account API to ask."""
    check = CHECKS.get(spec.key)
    if check is None or not spec.api_key:
        return None
    try:
        async with asyncio.timeout(timeout_s):
            return await check(spec, http, spec.api_key)
    except (aiohttp.ClientError, TimeoutError) as e:
        return CreditReport(
            spec.key,
            key_ok=None,
            problem=f"{spec.name}: account API unreachable at {_base(spec)} ({type(e).__name__})",
        )


def _reset_at(value: object) -> float | None:
    """A provider-given reset time, only if it is a sane date (see ``retry_after``)."""
    try:
        epoch = float(str(value)) if value else None
    except ValueError:
        return None
    return bounded_reset_at(epoch, now=time.time())
