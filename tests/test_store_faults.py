"""The health store fails open: whatever happens to it, calls keep reaching healthy providers.

Every fault is real: a redis-server this test owns is SIGKILLed and restarted, or SIGSTOPped;
a SQLite file is overwritten on disk, a row is damaged, the file sits on a tmpfs remounted
read-only or filled to the last byte. Each time the caller is answered by the healthy cloud
provider (Cartesia's simulator, through the real LiveKit plugin), the store fault is logged
once, counted in the metrics, and the process is back on the shared store when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from agent.call import CallRuntime, build_call_runtime
from agent.settings import load_settings
from plugins.resilience.store import SQLITE_FILENAME, open_store
from plugins.resilience.store_failopen import FailOpenStore
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.faults import Fault, FaultType
from tests.guard_fixtures import synthesize
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
KEY = "tts:cartesia"
FAULT_EVENT = "health store failed"
BACK_EVENT = "health store is back"


@pytest.fixture(scope="module")
def warm_voice() -> None:
    from plugins.local.hibari_tts import HibariEngine

    HibariEngine.shared().synthesize("warm up")  # the simulator speaks with it


@pytest.fixture
async def cartesia(warm_voice: None) -> AsyncIterator[CartesiaSimulator]:
    async with CartesiaSimulator() as sim:
        yield sim


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


def runtime_for(
    sim: CartesiaSimulator, data_dir: Path, redis_url: str | None = None
) -> CallRuntime:
    settings = load_settings(
        data_dir=data_dir, tts_providers="cartesia,free-tts", redis_url=redis_url,
        cartesia_api_key="sim-key", cartesia_base_url=sim.base_url,
        tts_first_audio_timeout=5.0,  # a loaded test machine is not a slow provider
    )  # fmt: skip
    return build_call_runtime(settings, vad=None, call_id="store-fault")


def fail_open_store(runtime: CallRuntime) -> FailOpenStore:
    store = runtime.store
    assert isinstance(store, FailOpenStore)
    store.retry_s = 0.1  # try the shared store again soon (production: every 2 s)
    return store


async def turn_by_cartesia(runtime: CallRuntime, sim: CartesiaSimulator) -> None:
    """One turn: audio comes back, and Cartesia (not the local floor) served it."""
    before = sim.state.log.count()
    switches: list[Any] = []
    runtime.on_switch(switches.append)
    assert len(await synthesize(runtime.tts, "Thanks for calling, how can I help?")) > 0
    assert sim.state.log.count() == before + 1, "the healthy cloud provider was not asked"
    assert switches == [], f"the call moved off Cartesia: {switches}"


async def until(condition: Callable[[], bool], step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` until ``condition`` holds, within a deadline."""
    deadline = time.monotonic() + 20.0
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await step()


def events(logs: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [e for e in logs if str(e.get("event", "")).startswith(prefix)]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- Redis ----------------------------------------------------------------------------------


async def test_redis_killed_and_restarted(
    cartesia: CartesiaSimulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    runtime = runtime_for(cartesia, tmp_path, redis_server.url)
    store = fail_open_store(runtime)
    faults_before = metric("voice_health_store_faults_total", backend="redis", reason="error")
    with capture_logs() as logs:
        await turn_by_cartesia(runtime, cartesia)
        assert store.degraded is None
        redis_server.kill()
        for _ in range(3):
            await turn_by_cartesia(runtime, cartesia)
        assert store.degraded is not None
        assert metric("voice_health_store_up", backend="redis") == 0.0
        redis_server.start(port=redis_server.port)  # back where the workers point
        await until(lambda: store.degraded is None, lambda: turn_by_cartesia(runtime, cartesia))
        await turn_by_cartesia(runtime, cartesia)
        await runtime.aclose()
    (fault,) = events(logs, FAULT_EVENT)  # once, however many operations failed
    assert fault["log_level"] == "error" and "127.0.0.1" in fault["store"]
    assert len(events(logs, BACK_EVENT)) == 1
    assert metric("voice_health_store_up", backend="redis") == 1.0
    assert metric("voice_health_store_faults_total", backend="redis", reason="error") == (
        faults_before + 1
    )
    shared = open_store(redis_server.url, tmp_path)
    try:
        assert (await shared.health(KEY)).requests >= 1  # written again after the restart
    finally:
        await shared.aclose()


async def test_a_process_keeps_its_own_breaker_while_redis_is_down(
    cartesia: CartesiaSimulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Without the shared store a failing provider is still skipped after it fails here."""
    runtime = runtime_for(cartesia, tmp_path, redis_server.url)
    store = fail_open_store(runtime)
    redis_server.kill()
    cartesia.state.plan.always(Fault(FaultType.STATUS, status=503))
    for _ in range(3):  # three failures in a row trip the in-memory breaker
        assert len(await synthesize(runtime.tts, "Hello there.")) > 0  # the floor answers
    asked = cartesia.state.log.count()
    assert len(await synthesize(runtime.tts, "Still there?")) > 0
    assert cartesia.state.log.count() == asked  # skipped without a request
    assert store.degraded is not None
    await runtime.aclose()


async def test_redis_absent_from_the_start(cartesia: CartesiaSimulator, tmp_path: Path) -> None:
    server = RedisServer().start()
    url = server.url
    server.close()  # nothing listens there now
    runtime = runtime_for(cartesia, tmp_path, url)
    with capture_logs() as logs:
        for _ in range(2):
            await turn_by_cartesia(runtime, cartesia)
        await runtime.aclose()
    assert len(events(logs, FAULT_EVENT)) == 1


async def test_hung_redis_costs_one_deadline_not_one_per_turn(
    cartesia: CartesiaSimulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    runtime = runtime_for(cartesia, tmp_path, redis_server.url)
    store = fail_open_store(runtime)
    await turn_by_cartesia(runtime, cartesia)
    redis_server.signal(signal.SIGSTOP)  # accepts connections, never answers
    try:
        with capture_logs() as logs:
            # the first operation that reaches the hung store waits one deadline, once
            await until(
                lambda: store.degraded is not None, lambda: turn_by_cartesia(runtime, cartesia)
            )
            assert "deadline" in store.degraded
            waited: list[str] = []
            admit = store.shared.admit

            async def counted_admit(key: str, *, now: float | None = None) -> Any:
                waited.append(key)
                return await admit(key, now=now)

            store.shared.admit = counted_admit  # type: ignore[method-assign]
            for _ in range(3):
                await turn_by_cartesia(runtime, cartesia)
            assert waited == []  # no turn waited on the hung store again
    finally:
        redis_server.signal(signal.SIGCONT)
    await until(lambda: store.degraded is None, lambda: turn_by_cartesia(runtime, cartesia))
    await runtime.aclose()
    assert len(events(logs, FAULT_EVENT)) == 1
    (fault,) = events(logs, FAULT_EVENT)
    assert "deadline" in fault["error"]


def agent_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip


def test_status_and_doctor_name_a_failing_store(redis_server: RedisServer, tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path), "REDIS_URL": redis_server.url}
    ok = agent_cli("doctor", **env)
    (line,) = [line for line in ok.stdout.splitlines() if "health-store" in line]
    assert line.startswith("ok") and "read and write ok" in line, ok.stdout
    redis_server.signal(signal.SIGSTOP)
    try:
        for command in ("status", "doctor"):
            proc = agent_cli(command, **env)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 1 and "Traceback" not in out, out
            assert "Health store at REDIS_URL is failing" in out and "Calls keep running" in out
    finally:
        redis_server.signal(signal.SIGCONT)
    redis_server.kill()
    proc = agent_cli("status", **env)
    assert proc.returncode == 1 and "ConnectionError" in proc.stderr, proc.stderr


# -- SQLite ---------------------------------------------------------------------------------


async def a_first_call(sim: CartesiaSimulator, data_dir: Path) -> None:
    runtime = runtime_for(sim, data_dir)
    await turn_by_cartesia(runtime, sim)
    await runtime.aclose()


async def test_sqlite_file_corrupted_on_disk(cartesia: CartesiaSimulator, tmp_path: Path) -> None:
    await a_first_call(cartesia, tmp_path)
    path = tmp_path / SQLITE_FILENAME
    for leftover in tmp_path.glob(f"{SQLITE_FILENAME}-*"):
        leftover.unlink()
    with path.open("r+b") as f:
        f.write(b"this is not a database, it was damaged on disk " * 40)
    runtime = runtime_for(cartesia, tmp_path)
    with capture_logs() as logs:
        for _ in range(3):
            await turn_by_cartesia(runtime, cartesia)
        await runtime.aclose()
    (fault,) = events(logs, FAULT_EVENT)
    assert "not a database" in fault["error"]


async def test_one_corrupt_row_is_reset_with_a_log_line(
    cartesia: CartesiaSimulator, tmp_path: Path
) -> None:
    await a_first_call(cartesia, tmp_path)
    path = tmp_path / SQLITE_FILENAME
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            'UPDATE provider SET breaker = \'{"state": "open", "open_\' WHERE key = ?', (KEY,)
        )
        db.commit()
    runtime = runtime_for(cartesia, tmp_path)
    with capture_logs() as logs:
        await turn_by_cartesia(runtime, cartesia)  # not kept off by the damaged row
        await runtime.aclose()
    (reset,) = [e for e in events(logs, "health store record was corrupt") if e["provider"] == KEY]
    assert "not valid" in reset["error"]
    assert events(logs, FAULT_EVENT) == []  # a damaged row is not a store outage
    with contextlib.closing(sqlite3.connect(path)) as db:
        (breaker,) = db.execute("SELECT breaker FROM provider WHERE key = ?", (KEY,)).fetchone()
    assert json.loads(breaker)["state"] == "closed"


@pytest.mark.parametrize(
    "stored",
    [
        {"state": "open", "open_until": 1e300, "opened_by": "rate_limited"},
        {"state": "open", "open_until": 9.9e15, "trips": 10**30},
        {"state": "closed", "window": [[1, 2]]},
        [1, 2, 3],
    ],
    ids=["open-1e300", "open-year-300M", "bad-window", "not-an-object"],
)
async def test_no_stored_value_crashes_status_or_keeps_a_provider_off(
    cartesia: CartesiaSimulator, tmp_path: Path, stored: object
) -> None:
    await a_first_call(cartesia, tmp_path)
    stats = {"lat": [1e308, 12.0], "requests": 3, "failures": 1, "updated_at": 1.0,
             "credit": {"remaining": "inf", "unit": "characters", "reset_at": 1e300}}  # fmt: skip
    with contextlib.closing(sqlite3.connect(tmp_path / SQLITE_FILENAME)) as db:
        db.execute(
            "UPDATE provider SET breaker = ?, stats = ? WHERE key = ?",
            (json.dumps(stored), json.dumps(stats), KEY),
        )
        db.commit()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path)}
    for args in (["status"], ["status", "--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "agent", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
    items = json.loads(proc.stdout)
    assert "cartesia" in {i["key"].partition(":")[2] for i in items}
    runtime = runtime_for(cartesia, tmp_path)
    await turn_by_cartesia(runtime, cartesia)  # the provider is not off for years
    await runtime.aclose()


# -- a real filesystem: read-only, full ---------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs mounted for this test (needs root and mount permission, else skipped)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_sqlite_on_a_read_only_filesystem(cartesia: CartesiaSimulator, tmpfs: Path) -> None:
    await a_first_call(cartesia, tmpfs)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    runtime = runtime_for(cartesia, tmpfs)
    with capture_logs() as logs:
        for _ in range(3):
            await turn_by_cartesia(runtime, cartesia)
        await runtime.aclose()
    (fault,) = events(logs, FAULT_EVENT)
    assert "readonly" in fault["error"] or "read-only" in fault["error"] or "open" in fault["error"]


async def test_sqlite_on_a_full_disk(cartesia: CartesiaSimulator, tmpfs: Path) -> None:
    await a_first_call(cartesia, tmpfs)
    with (tmpfs / "filler").open("wb") as f, contextlib.suppress(OSError):
        while True:  # until ENOSPC: the disk is full
            f.write(b"\0" * 65536)
            f.flush()
    runtime = runtime_for(cartesia, tmpfs)
    with capture_logs() as logs:
        for _ in range(4):
            await turn_by_cartesia(runtime, cartesia)
            await asyncio.sleep(0)
        await runtime.aclose()
    (fault,) = events(logs, FAULT_EVENT)
    assert "full" in fault["error"]
