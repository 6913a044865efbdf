"""What a provider's account API says about a key, and the small toolkit its check is made of.

A provider's credit check (its definition's ``credit``) is one cheap, read-only request to its
account API; none spends credit. ``doctor`` shows the report once; the credit reader
(:mod:`plugins.observability.credit_watch`) acts on it in the background.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from plugins.resilience.retry_after import bounded_reset_at
from plugins.spec import ProviderSpec


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


def mask(secret: str | None) -> str:
    """``sk-…a1b2``: enough to tell two keys apart, never enough to use one."""
    if not secret:
        return "(not set)"
    if len(secret) <= 8:
        return "…" + "*" * 4
    return f"{secret[:3]}…{secret[-4:]}"


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, Any]:
    """GET ``url``: its status and JSON body (None when the body is not JSON)."""
    async with http.get(url, headers=headers) as resp:
        try:
            body: Any = await resp.json(content_type=None)
        except ValueError:
            body = None
        return resp.status, body


def rejected(spec: ProviderSpec, status: int) -> CreditReport:
    return CreditReport(
        spec.key,
        key_ok=False,
        problem=f"{spec.name}: key {mask(spec.api_key)} was rejected ({status}); "
        f"check the key in your provider dashboard and update it",
    )


def unexpected(spec: ProviderSpec, status: int) -> CreditReport:
    return CreditReport(
        spec.key, key_ok=None, problem=f"{spec.name}: account API answered {status}; try later"
    )


def reset_time(value: object) -> float | None:
    """A provider-given reset time (epoch seconds), only if it is a sane date."""
    try:
        epoch = float(str(value)) if value else None
    except ValueError:
        return None
    return bounded_reset_at(epoch, now=time.time())


def out_of_credit(spec: ProviderSpec, what: str) -> CreditReport:
    """The key works but there is nothing left to spend."""
    return CreditReport(spec.key, True, f"{spec.name}: {what}", remaining=0.0)


async def key_check(
    spec: ProviderSpec,
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    *,
    rejected_statuses: tuple[int, ...] = (401, 403),
    out_of_credit_as: str | None = None,
) -> CreditReport:
    """The check of a provider whose account API only says whether the key works.

    One read-only GET: ``rejected_statuses`` mean the key was refused, 402 (when the provider
    speaks it, ``out_of_credit_as`` names it) means nothing is left, 200 means the key is good.
    """
    status, _ = await get_json(http, url, headers)
    if status in rejected_statuses:
        return rejected(spec, status)
    if status == 402 and out_of_credit_as is not None:
        return out_of_credit(spec, out_of_credit_as)
    if status != 200:
        return unexpected(spec, status)
    return CreditReport(spec.key, key_ok=True)
