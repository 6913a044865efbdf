"""The pool-wide health store: the same documents as the SQLite store, kept in Redis.

Atomicity comes from compare-and-set: read the document, apply the breaker rules in Python,
then write with a small Lua script only if the stored text is still exactly what was read.
When another process won the race the script hands back the current text and the change is
applied again to it. The rules therefore live once (in Python), and the half-open single probe
holds across every process of the pool. Usage counters are plain ``HINCRBYFLOAT``.

Keys, under a configurable prefix (``StoreConfig.redis_prefix``):
``<prefix>doc:<provider key>`` (hash: ``b`` breaker JSON, ``s`` statistics JSON), ``<prefix>usage:<provider key>`` (hash of
``unit@period`` -> amount), ``<prefix>keys`` (set of provider keys) and ``<prefix>checked_at``
(the last :meth:`ping`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from plugins.resilience.breaker import Jitter
from plugins.resilience.store import (
    Clock,
    DocumentStore,
    HealthStoreError,
    Parts,
    ProviderDoc,
    StoreConfig,
    apply_change,
    safe_url,
)

T = TypeVar("T")

# KEYS: document hash, key set. ARGV: breaker and stats as read, breaker and stats to write,
# provider key. Writes only if both parts are still exactly as read; else returns them.
_CAS = """
local current = redis.call('HMGET', KEYS[1], 'b', 's')
local b = current[1] or ''
local s = current[2] or ''
if b == ARGV[1] and s == ARGV[2] then
  redis.call('HSET', KEYS[1], 'b', ARGV[3], 's', ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[5])
  return {1, '', ''}
end
return {0, b, s}
"""

_MAX_CAS_ROUNDS = 100


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisHealthStore(DocumentStore):
    """:class:`~plugins.resilience.types.HealthStore` on Redis (``redis.asyncio``)."""

    def __init__(
        self,
        url: str,
        *,
        config: StoreConfig | None = None,
        clock: Clock = time.time,
        jitter: Jitter | None = None,
    ) -> None:
        super().__init__(config, clock=clock, jitter=jitter)
        self._redis: aioredis.Redis = aioredis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=self.config.op_timeout_s,
            socket_timeout=self.config.op_timeout_s,
            # a pooled connection the server closed (it restarted) is retried once on a new one
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        self._cas: Any = self._redis.register_script(_CAS)
        self.where = safe_url(url)
        prefix = self.config.redis_prefix
        self._keys_key = f"{prefix}keys"
        self._checked_key = f"{prefix}checked_at"
        self._doc_prefix = f"{prefix}doc:"
        self._usage_prefix = f"{prefix}usage:"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except RedisError as exc:
            raise HealthStoreError(
                f"health store at {self.where} failed ({type(exc).__name__}: {exc}); check "
                "that Redis is running and reachable, or leave the store URL empty to use a "
                "SQLite file on this machine"
            ) from exc

    async def _read_breaker(self, key: str) -> str:
        with self._errors():
            return _text((await self._redis.hget(self._doc_prefix + key, "b")) or "")

    async def _read(self, key: str) -> Parts:
        with self._errors():
            b, s = await self._redis.hmget(self._doc_prefix + key, ["b", "s"])
        return _text(b or ""), _text(s or "")

    async def _update(self, key: str, change: Callable[[ProviderDoc], T]) -> T:
        doc_key = self._doc_prefix + key
        stored = await self._read(key)
        for _ in range(_MAX_CAS_ROUNDS):
            result, write = apply_change(stored, change, key=key)
            if write is None:
                return result  # nothing changed: the read was the answer
            with self._errors():
                written, b, s = await self._cas(
                    keys=[doc_key, self._keys_key], args=[*stored, *write, key]
                )
            if int(written) == 1:
                return result
            stored = (_text(b), _text(s))
        raise HealthStoreError(
            f"health store: gave up updating {key!r} after {_MAX_CAS_ROUNDS} conflicting "
            "writes; the Redis pool is overloaded or a client is looping"
        )

    async def _add_usage(self, key: str, field_name: str, amount: float) -> float:
        with self._errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hincrbyfloat(self._usage_prefix + key, field_name, amount)
            pipe.sadd(self._keys_key, key)
            total, _ = await pipe.execute()
        return float(total)

    async def _usage(self, key: str) -> dict[str, float]:
        with self._errors():
            raw = await self._redis.hgetall(self._usage_prefix + key)
        return {_text(f): float(a) for f, a in raw.items()}

    async def _keys(self) -> list[str]:
        with self._errors():
            members = await self._redis.smembers(self._keys_key)
        return [_text(m) for m in members]

    async def _ping(self, now: float) -> None:
        with self._errors():
            await self._redis.set(self._checked_key, repr(now))

    async def aclose(self) -> None:
        await self._redis.aclose()
