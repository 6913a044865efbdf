"""Key and endpoint pools: one provider configured with several keys, accounts or regions.

The syntax is the provider's own variables, comma-separated::

    OPENAI_API_KEY=sk-first,sk-second          # two keys (two accounts, two rate limits)
    OPENAI_BASE_URL=https://eu.example/v1,https://us.example/v1   # regional endpoints
    PROVIDER_WEIGHTS=llm:openai#1=2,llm:openai#2=1   # optional shares (agent settings)

Keys and base URLs pair up in order (N keys with N URLs), or one side is shared (N keys on
one URL, one key on N URLs). Each pair is its own member: its own guard, breaker, budget and
health record, named ``llm:openai#1``, ``llm:openai#2`` in ``status``, ``doctor``, logs and
metrics, never by its key. Members of one pool form one tier of the chain: keys of one
endpoint share by weight; members that differ by endpoint are equals served closest first
(lowest measured latency, see :mod:`plugins.fallback.balance`).

Every problem raises :class:`PoolError` naming the variable and the entry's position, never
an entry's value (a key is a secret).
"""

from __future__ import annotations

from dataclasses import replace

from plugins.spec import Balance, ProviderSpec


class PoolError(ValueError):
    """A pool setting is malformed; ``env`` names the variable, the message never a secret."""

    def __init__(self, env: str, problem: str) -> None:
        super().__init__(f"{env}: {problem}")
        self.env = env
        self.problem = problem


def split_pool(raw: str | None, env: str, *, what: str) -> list[str]:
    """The entries of a comma-separated setting (one entry without a comma; none if unset)."""
    if raw is None or not raw.strip():
        return []
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) == 1:
        return parts
    for n, part in enumerate(parts, 1):
        if not part:
            raise PoolError(
                env,
                f"entry {n} of {len(parts)} is empty; separate the {what}s with single commas, "
                "with none at the start or end",
            )
    first: dict[str, int] = {}
    for n, part in enumerate(parts, 1):
        if part in first:
            raise PoolError(
                env, f"entries {first[part]} and {n} are the same {what}; list each {what} once"
            )
        first[part] = n
    return parts


def pool_specs(
    base: ProviderSpec,
    *,
    key_env: str | None,
    url_env: str | None,
) -> list[ProviderSpec]:
    """The members ``base`` (whose key and base URL may be comma-separated lists) stands for.

    A provider with one key and one endpoint is one spec, unchanged (``llm:openai``).
    """
    keys = split_pool(base.api_key, key_env, what="key") if key_env else []
    urls = split_pool(base.base_url, url_env, what="URL") if url_env else []
    size = max(len(keys), len(urls), 1)
    if len(keys) > 1 and len(urls) > 1 and len(keys) != len(urls):
        raise PoolError(
            key_env or "",
            f"lists {len(keys)} keys and {url_env} lists {len(urls)} URLs; give one URL, one "
            "key, or as many of each (they pair up in order)",
        )
    if size == 1:
        return [replace(base, api_key=keys[0] if keys else base.api_key)]
    balance: Balance = "closest" if len(urls) > 1 else "weighted"
    return [
        replace(
            base,
            api_key=keys[n if len(keys) > 1 else 0] if keys else None,
            base_url=urls[n if len(urls) > 1 else 0] if urls else None,
            member=n + 1,
            tier=base.tier or base.name,
            balance=base.balance if base.tier else balance,
        )
        for n in range(size)
    ]
