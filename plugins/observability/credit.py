"""Ask a provider whether our key works and how much credit is left.

Used by ``doctor`` (once, to say what is wrong) and by the background credit reader (to show
remaining quota and to learn a quota's reset time before a 402 teaches it the hard way). The
check itself is the provider definition's ``credit`` (:mod:`plugins.providers`): one cheap,
read-only request to its account API; none spends credit.
"""

from __future__ import annotations

import asyncio

import aiohttp

from plugins.catalog import CATALOG, Catalog
from plugins.observability.account import CreditReport
from plugins.providers.definition import Provider
from plugins.spec import ProviderSpec


def _checked(spec: ProviderSpec, catalog: Catalog) -> Provider | None:
    """The definition, if it has an account API to ask and the spec a key to ask with."""
    provider = catalog.get(spec.slot, spec.name) if spec.factory is None else None
    if provider is None or provider.credit is None or not spec.api_key:
        return None
    return provider


def can_check(spec: ProviderSpec, catalog: Catalog = CATALOG) -> bool:
    return _checked(spec, catalog) is not None


async def check_credit(
    spec: ProviderSpec,
    http: aiohttp.ClientSession,
    *,
    timeout_s: float = 5.0,
    catalog: Catalog = CATALOG,
) -> CreditReport | None:
    """One provider's key and credit; ``None`` if the provider has no account API to ask."""
    provider = _checked(spec, catalog)
    if provider is None or provider.credit is None or spec.api_key is None:
        return None
    try:
        async with asyncio.timeout(timeout_s):
            return await provider.credit(spec, http, spec.api_key)
    except (aiohttp.ClientError, TimeoutError) as e:
        return CreditReport(
            spec.key,
            key_ok=None,
            problem=f"{spec.name}: account API unreachable at {provider.endpoint(spec)} "
            f"({type(e).__name__})",
        )
