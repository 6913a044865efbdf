"""How much does asking the shared health store "may I try this provider?" cost per attempt?

Stock LiveKit's FallbackAdapter answers that question from an in-memory flag on its own
instance (nothing shared across calls); that flag read is the baseline. Each store is measured
on the hot path (breaker closed), on a breaker that is open, and while another caller holds the
half-open probe; the ratio column compares against the baseline.

Run: ``.venv/bin/python bench/store_admit.py [--n 2000] [--redis-url redis://...]``. Without a
URL a private redis-server is started on a free 127.0.0.1 port (persistence off) and stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.resilience.store import DocumentStore, StoreConfig, open_store
from plugins.resilience.types import Failure, FailureKind


class _StockFlag:
    """What LiveKit's FallbackAdapter consults: a per-instance availability flag."""

    def __init__(self) -> None:
        self.available = True

    async def admit(self) -> bool:
        return self.available


async def _median_us(fn: Callable[[], Awaitable[object]], n: int) -> float:
    for _ in range(min(200, n)):  # warm up connections, caches, the executor thread
        await fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        await fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000.0


@contextmanager
def _redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH: run `make install` (it installs it)")
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        else:
            raise SystemExit("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


async def _measure_store(store: DocumentStore, n: int) -> dict[str, float]:
    now = time.time()
    for _ in range(store.config.latency_samples):  # a full latency reservoir, as in production
        await store.record_success("tts:closed", latency_s=0.123456789, now=now)
    closed = await _median_us(lambda: store.admit("tts:closed", now=now), n)
    for _ in range(3):
        await store.record_failure("tts:open", Failure(FailureKind.TIMEOUT, "bench"), now=now)
    opened = await _median_us(lambda: store.admit("tts:open", now=now + 1), n)
    later = now + 120
    assert (await store.admit("tts:open", now=later)).is_probe
    probing = await _median_us(lambda: store.admit("tts:open", now=later), n)
    success = await _median_us(
        lambda: store.record_success("tts:closed", latency_s=0.1, now=now), max(200, n // 4)
    )
    return {
        "admit closed": closed,
        "admit open": opened,
        "admit probe busy": probing,
        "record_success": success,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="timed calls per case")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of a private one")
    args = parser.parse_args()

    flag = _StockFlag()
    baseline = await _median_us(flag.admit, args.n)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(None, Path(tmp))
        results["sqlite"] = await _measure_store(store, args.n)
        await store.aclose()
    with _redis_server() if args.redis_url is None else _nullctx(args.redis_url) as url:
        store = open_store(url, Path("."), config=StoreConfig(redis_prefix="bench:"))
        results["redis"] = await _measure_store(store, args.n)
        await store.aclose()

    print(f"baseline (stock LiveKit availability flag): median {baseline:.2f} us")
    print(f"{'store':8} {'case':18} {'median us':>10} {'x baseline':>12}")
    for name, cases in results.items():
        for case, us in cases.items():
            print(f"{name:8} {case:18} {us:10.1f} {us / baseline:12.0f}")


@contextmanager
def _nullctx(value: str) -> Iterator[str]:
    yield value


if __name__ == "__main__":
    asyncio.run(main())
