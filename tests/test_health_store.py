"""One suite, two backends: the SQLite file and a real redis-server must behave identically.

Several store instances on the same backend stand in for the job processes of a machine; the
cross-process tests use real OS processes.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from plugins.resilience.breaker import BreakerConfig, key_fingerprint
from plugins.resilience.scrub import scrub
from plugins.resilience.store import (
    SQLITE_FILENAME,
    DocumentStore,
    HealthStoreError,
    StoreConfig,
    open_store,
)
from plugins.resilience.store_redis import RedisHealthStore
from plugins.resilience.store_sqlite import SqliteHealthStore
from plugins.resilience.types import BreakerState, Failure, FailureKind

REPO = Path(__file__).resolve().parents[1]
T0 = float(calendar.timegm((2026, 11, 25, 13, 0, 0)))
KEY = "tts:cartesia"


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Backend:
    """Opens any number of stores on one backend (one per simulated process)."""

    url: str | None
    data_dir: Path
    prefix: str
    clock: FakeClock = field(default_factory=FakeClock)
    opened: list[DocumentStore] = field(default_factory=list)

    def open(self, **config: object) -> DocumentStore:
        cfg = StoreConfig(redis_prefix=self.prefix, **config)  # type: ignore[arg-type]
        store = open_store(
            self.url, self.data_dir, config=cfg, clock=self.clock, jitter=lambda: 0.0
        )
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "redis"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str
) -> AsyncIterator[Backend]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    b = Backend(url=url, data_dir=tmp_path / "data", prefix=redis_prefix)
    yield b
    for store in b.opened:
        await store.aclose()


def server_error(message: str = "503 from the simulator") -> Failure:
    return Failure(FailureKind.SERVER_ERROR, message, status=503)


async def trip(store: DocumentStore, now: float = T0) -> None:
    for _ in range(3):
        await store.record_failure(KEY, server_error(), now=now)


# -- the breaker through the store ---------------------------------------------------------


async def test_fresh_provider_is_admitted_and_healthy(backend: Backend) -> None:
    store = backend.open()
    admission = await store.admit(KEY)
    assert admission.allowed and admission.state is BreakerState.CLOSED
    health = await store.health(KEY)
    assert health.state is BreakerState.CLOSED and health.requests == 0
    assert health.success_rate is None and health.latency_ms_p50 is None


async def test_a_trip_in_one_process_is_seen_by_another(backend: Backend) -> None:
    call_a, call_b = backend.open(), backend.open()
    await call_a.record_failure(KEY, server_error(), now=T0)
    await call_b.record_failure(KEY, server_error(), now=T0)  # counts add up across processes
    assert await call_a.record_failure(KEY, server_error(), now=T0) is BreakerState.OPEN
    denied = await call_b.admit(KEY, now=T0 + 1)
    assert not denied.allowed and denied.state is BreakerState.OPEN
    assert denied.until == T0 + 5.0
    health = await call_b.health(KEY)
    assert health.state is BreakerState.OPEN and health.trips == 1
    assert health.open_until == T0 + 5.0
    assert health.last_failure is FailureKind.SERVER_ERROR


async def test_retry_after_is_honoured_exactly(backend: Backend) -> None:
    store = backend.open()
    limited = Failure(FailureKind.RATE_LIMITED, "429 too many requests", 429, retry_after_s=3.25)
    assert await store.record_failure(KEY, limited, now=T0) is BreakerState.OPEN
    denied = await store.admit(KEY, now=T0 + 3.2)
    assert not denied.allowed and denied.until == T0 + 3.25
    assert (await store.admit(KEY, now=T0 + 3.25)).is_probe


async def test_half_open_admits_one_probe_among_concurrent_callers(backend: Backend) -> None:
    stores = [backend.open() for _ in range(3)]
    await trip(stores[0])
    later = T0 + 60
    admissions = await asyncio.gather(*(s.admit(KEY, now=later) for s in stores for _ in range(8)))
    probes = [a for a in admissions if a.allowed]
    assert len(probes) == 1 and probes[0].is_probe
    assert all(a.state is BreakerState.HALF_OPEN for a in admissions)
    # the probe succeeds: closed for everyone
    await stores[1].record_success(KEY, latency_s=0.2, now=later + 1)
    assert (await stores[2].admit(KEY, now=later + 1)).allowed
    assert (await stores[0].health(KEY)).state is BreakerState.CLOSED


async def test_failed_probe_reopens_for_longer(backend: Backend) -> None:
    store = backend.open()
    await trip(store)
    assert (await store.admit(KEY, now=T0 + 5)).is_probe
    assert await store.record_failure(KEY, server_error(), now=T0 + 6) is BreakerState.OPEN
    assert (await store.health(KEY)).open_until == T0 + 6 + 10.0


async def test_concurrent_records_lose_no_update(backend: Backend) -> None:
    stores = [backend.open() for _ in range(2)]
    n = 40
    await asyncio.gather(
        *(stores[i % 2].record_success(KEY, latency_s=0.1, now=T0) for i in range(n))
    )
    health = await stores[0].health(KEY)
    assert health.requests == n and health.failures == 0


async def test_counters_latency_percentiles_and_reservoir(backend: Backend) -> None:
    store = backend.open(latency_samples=10)
    for ms in range(1, 21):  # 1..20 ms; only the last 10 (11..20) are kept
        await store.record_success(KEY, latency_s=ms / 1000.0, now=T0)
    await store.record_success(KEY, latency_s=None, now=T0)
    await store.record_failure(KEY, server_error(), now=T0)
    await store.record_failure(
        KEY, Failure(FailureKind.REQUEST_FAULT, "context too long", 400), now=T0
    )
    health = await store.health(KEY)
    assert health.requests == 23
    assert health.failures == 1  # the request's own fault is not the provider's
    assert health.success_rate == pytest.approx(22 / 23)
    assert health.latency_ms_p50 == pytest.approx(15.0)
    assert health.latency_ms_p95 == pytest.approx(20.0)
    assert health.last_failure is FailureKind.REQUEST_FAULT
    assert health.state is BreakerState.CLOSED


async def test_last_error_never_keeps_a_secret(backend: Backend) -> None:
    store = backend.open()
    secret = "sk-" + "simsecret" + "0123456789" * 2  # fake, key-shaped at run time only
    message = f"401 invalid key\nAuthorization: Bearer {secret} was refused"
    await store.record_failure(KEY, Failure(FailureKind.KEY_REJECTED, message, 401), now=T0)
    health = await store.health(KEY)
    assert secret not in health.last_error and "simsecret" not in health.last_error
    assert "\n" not in health.last_error and "401 invalid key" in health.last_error


def test_the_scrubber_keeps_ordinary_errors_readable() -> None:
    text = "503 Service Unavailable: upstream overloaded, retry later"
    assert scrub(text) == text
    long = scrub("upstream said no " * 100, limit=50)
    assert len(long) == 50 and long.endswith("…")
    assert scrub("api_key=sim-key-123 rejected") == "api_key=[redacted] rejected"
    assert "sim-tok" not in scrub('{"access_token": "sim-tok-1"}')
    readable = "invalid token count: maximum context length is 8192 tokens"
    assert scrub(readable) == readable


async def test_usage_accumulates_per_unit_and_period(backend: Backend) -> None:
    store = backend.open(usage_period="month", unit_periods={"usd": "day"})
    other = backend.open(usage_period="month", unit_periods={"usd": "day"})
    assert await store.add_usage(KEY, "characters", 120, now=T0) == 120
    assert await other.add_usage(KEY, "characters", 30.5, now=T0) == 150.5
    assert await store.add_usage(KEY, "usd", 0.25, now=T0) == 0.25
    assert (await store.health(KEY)).usage == {"characters": 150.5, "usd": 0.25}
    next_day = T0 + 86400
    backend.clock.t = next_day
    assert await store.add_usage(KEY, "usd", 0.5, now=next_day) == 0.5  # a new day
    assert await store.add_usage(KEY, "characters", 1, now=next_day) == 151.5  # same month
    assert (await store.health(KEY)).usage == {"characters": 151.5, "usd": 0.5}
    backend.clock.t = float(calendar.timegm((2026, 12, 1, 0, 0, 1)))
    assert (await store.health(KEY)).usage == {}
    with pytest.raises(ValueError, match="usage unit"):
        await store.add_usage(KEY, "a@b", 1)


async def test_overrides_are_shared_and_validated(backend: Backend) -> None:
    operator, call = backend.open(), backend.open()
    await operator.set_override(KEY, BreakerState.FORCED_OPEN)
    denied = await call.admit(KEY, now=T0)
    assert not denied.allowed and denied.state is BreakerState.FORCED_OPEN
    assert (await call.health(KEY)).state is BreakerState.FORCED_OPEN
    await operator.set_override(KEY, BreakerState.DISABLED)
    assert (await call.admit(KEY, now=T0)).state is BreakerState.DISABLED
    await operator.set_override(KEY, None)
    assert (await call.admit(KEY, now=T0)).allowed
    with pytest.raises(ValueError, match="forced_open, disabled or None"):
        await operator.set_override(KEY, BreakerState.HALF_OPEN)


async def test_key_rejected_until_a_new_key_is_registered(backend: Backend) -> None:
    old, new = key_fingerprint("sim-key-old"), key_fingerprint("sim-key-new")
    first = backend.open()
    assert await first.register(KEY, old) is BreakerState.CLOSED
    rejected = Failure(FailureKind.KEY_REJECTED, "401 invalid api key", 401)
    assert await first.record_failure(KEY, rejected, now=T0) is BreakerState.KEY_REJECTED
    restarted = backend.open()  # same settings: still off, days later
    assert await restarted.register(KEY, old) is BreakerState.KEY_REJECTED
    assert not (await restarted.admit(KEY, now=T0 + 5 * 86400)).allowed
    fixed = backend.open()
    assert await fixed.register(KEY, new) is BreakerState.CLOSED
    assert (await first.admit(KEY, now=T0 + 5 * 86400)).allowed


async def test_all_health_lists_every_provider(backend: Backend) -> None:
    store = backend.open()
    await store.record_success("llm:openai", latency_s=0.3, now=T0)
    await trip(store)
    await store.add_usage("stt:deepgram", "audio_s", 12.0, now=T0)
    rows = await store.all_health()
    assert [r.key for r in rows] == ["llm:openai", "stt:deepgram", KEY]
    by_key = {r.key: r for r in rows}
    assert by_key[KEY].state is BreakerState.OPEN
    assert by_key["stt:deepgram"].usage == {"audio_s": 12.0}
    assert by_key["llm:openai"].requests == 1


async def test_breaker_config_reaches_the_store(backend: Backend) -> None:
    store = backend.open(breaker=BreakerConfig(consecutive_failures=1, base_open_s=2))
    assert await store.record_failure(KEY, server_error(), now=T0) is BreakerState.OPEN
    assert (await store.health(KEY)).open_until == T0 + 2


# -- real OS processes ---------------------------------------------------------------------

_WORKER = """
import asyncio, json, sys
from pathlib import Path
from plugins.resilience.store import StoreConfig, open_store
from plugins.resilience.types import Failure, FailureKind

async def main() -> None:
    url, data_dir, prefix, action, key, now = sys.argv[1:7]
    store = open_store(url or None, Path(data_dir), config=StoreConfig(redis_prefix=prefix))
    try:
        if action == "race":
            await store.health(key)  # connect before the start signal
            print("ready", flush=True)
            sys.stdin.readline()
            a = await store.admit(key, now=float(now))
            print(json.dumps({"allowed": a.allowed, "probe": a.is_probe, "state": a.state.value}))
        elif action == "succeed":
            print("ready", flush=True)
            sys.stdin.readline()
            for _ in range(25):
                await store.record_success(key, latency_s=0.05, now=float(now))
            print(json.dumps({"done": True}))
        else:
            for _ in range(3):
                state = await store.record_failure(
                    key, Failure(FailureKind.TIMEOUT, "no first audio"), now=float(now)
                )
            print(json.dumps({"state": state.value}))
    finally:
        await store.aclose()

asyncio.run(main())
"""


async def _spawn(backend: Backend, action: str, now: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WORKER,
        backend.url or "",
        str(backend.data_dir),
        backend.prefix,
        action,
        KEY,
        repr(now),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _finish(proc: asyncio.subprocess.Process) -> dict[str, object]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _start_together(
    backend: Backend, action: str, now: float, count: int
) -> list[dict[str, object]]:
    """Start ``count`` worker processes, wait until all are connected, release them at once."""
    procs = [await _spawn(backend, action, now) for _ in range(count)]
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line.strip() == b"ready", line
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
    await asyncio.gather(*(p.stdin.drain() for p in procs if p.stdin is not None))
    return list(await asyncio.gather(*(_finish(p) for p in procs)))


async def test_processes_racing_for_the_half_open_probe_exactly_one_wins(
    backend: Backend,
) -> None:
    store = backend.open()
    await trip(store)
    results = await _start_together(backend, "race", T0 + 60, count=3)
    assert sum(1 for r in results if r["probe"]) == 1, results
    assert sum(1 for r in results if r["allowed"]) == 1, results
    assert {r["state"] for r in results} == {"half_open"}
    assert not (await store.admit(KEY, now=T0 + 61)).allowed  # the lease is held


async def test_processes_writing_at_once_lose_no_update(backend: Backend) -> None:
    store = backend.open()
    await _start_together(backend, "succeed", T0, count=3)
    health = await store.health(KEY)
    assert health.requests == 3 * 25
    assert health.latency_ms_p50 == pytest.approx(50.0)


async def test_a_failure_recorded_by_another_process_is_seen_here(backend: Backend) -> None:
    store = backend.open()
    assert (await store.admit(KEY, now=T0)).allowed
    result = await _finish(await _spawn(backend, "fail", T0))
    assert result == {"state": "open"}
    denied = await store.admit(KEY, now=T0 + 1)
    assert not denied.allowed and denied.reason.startswith("timeout until")


# -- choosing the backend ------------------------------------------------------------------


async def test_open_store_picks_the_backend_from_the_url(tmp_path: Path, redis_url: str) -> None:
    sqlite_store = open_store(None, tmp_path)
    assert isinstance(sqlite_store, SqliteHealthStore)
    await sqlite_store.record_success(KEY, latency_s=0.1)
    assert (tmp_path / SQLITE_FILENAME).exists()
    await sqlite_store.aclose()
    named = open_store(f"sqlite:///{tmp_path}/other.sqlite3", tmp_path / "unused")
    assert isinstance(named, SqliteHealthStore) and named.path == tmp_path / "other.sqlite3"
    await named.aclose()
    redis_store = open_store(redis_url, tmp_path)
    assert isinstance(redis_store, RedisHealthStore)
    assert (await redis_store.admit(KEY)).allowed
    await redis_store.aclose()
    with pytest.raises(ValueError, match="postgres:// is not supported"):
        open_store("postgres://user:sim-password@db/health", tmp_path)


async def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = open_store(None, blocker / "data")
    with pytest.raises(HealthStoreError, match="cannot open the health store"):
        await store.admit(KEY)
    await store.aclose()


async def test_unreachable_redis_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store(f"redis://user:sim-password@127.0.0.1:{port}/0", tmp_path)
    with pytest.raises(HealthStoreError, match=f"redis://127.0.0.1:{port}/0 failed") as info:
        await store.admit(KEY)
    assert "sim-password" not in str(info.value)
    with pytest.raises(HealthStoreError):
        await store.record_failure(KEY, server_error())
    await store.aclose()
