"""What our own faults cost a caller: a huge error body, a hung health store.

1. Classifying a provider error whose body is 10 MB vs one of 100 bytes (as the OpenAI SDK
   hands it over: the parsed JSON on ``APIStatusError.body``), on the event loop. The ratio is
   what a huge body costs beyond a small one; it should be ~1.
2. A turn (one guarded LLM request to the OpenAI simulator, the local floor behind it) with the
   shared Redis healthy, then SIGSTOPped (accepts connections, never answers), through
   :class:`~plugins.resilience.store_failopen.FailOpenStore` and, as the baseline, through the
   bare Redis store the guards used before it (every turn waits for the store's timeout and
   then the store error fails the provider, so the floor answers).

Run: ``.venv/bin/python -m bench.own_faults [--turns 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from livekit.agents import APIStatusError

from plugins.chain import build_chains
from plugins.resilience.classify import classify
from plugins.resilience.deadlines import DeadlineSettings
from plugins.resilience.store import DocumentStore, StoreConfig, open_store
from plugins.resilience.store_failopen import FailOpenStore
from plugins.resilience.types import HealthStore
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec
from tests.guard_fixtures import ask
from tests.redis_server import RedisServer

DEADLINES = {"llm": DeadlineSettings(floor_s=2.0, ceiling_s=5.0, stall_s=2.0)}


def _status_error(detail_chars: int) -> APIStatusError:
    body = {"error": {"message": "upstream failure", "type": "server_error",
                      "detail": "x" * detail_chars}}  # fmt: skip
    return APIStatusError("Internal Server Error", status_code=500, body=body)


def bench_classify(n: int) -> tuple[float, float]:
    """Median milliseconds to classify a 100-byte and a 10 MB error body."""
    results = []
    for size in (100, 10 * 1024 * 1024):
        exc = _status_error(size)
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            failure = classify(exc)
            samples.append(time.perf_counter() - start)
        assert failure.kind.value == "server_error"
        results.append(statistics.median(samples) * 1000.0)
    return results[0], results[1]


async def _turns(store: HealthStore, sim: OpenAISimulator, n: int) -> tuple[float, int]:
    """Mean seconds per turn, and how many turns the cloud provider answered."""
    specs = [
        ProviderSpec("llm", "openai", base_url=sim.base_url, api_key="sim-key"),
        ProviderSpec("llm", "free-llm"),
    ]
    chains = build_chains(specs, store, deadlines=DEADLINES, probes=False)
    before = sim.state.log.count()
    times = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            assert await ask(chains.llm, "How much does it cost?")
            times.append(time.perf_counter() - start)
    finally:
        await chains.aclose()
    return statistics.mean(times), sim.state.log.count() - before


async def bench_hung_store(n: int) -> dict[str, tuple[float, int]]:
    server = RedisServer().start()
    results: dict[str, tuple[float, int]] = {}

    def shared(prefix: str) -> DocumentStore:
        return open_store(server.url, Path("."), config=StoreConfig(redis_prefix=prefix))

    try:
        async with OpenAISimulator() as sim:
            results["redis healthy"] = await _turns(FailOpenStore(shared("b1:")), sim, n)
            server.signal(signal.SIGSTOP)
            try:
                results["redis hung, bare store (before)"] = await _turns(shared("b2:"), sim, n)
                results["redis hung, fail-open store"] = await _turns(
                    FailOpenStore(shared("b3:")), sim, n
                )
            finally:
                server.signal(signal.SIGCONT)
    finally:
        server.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10, help="turns per store case")
    parser.add_argument("--n", type=int, default=20, help="classifications per body size")
    args = parser.parse_args()

    small_ms, huge_ms = bench_classify(args.n)
    print(f"{'classify error body':32} {'median ms':>10} {'x small':>8}")
    print(f"{'100 B':32} {small_ms:10.3f} {1.0:8.1f}")
    print(f"{'10 MB':32} {huge_ms:10.3f} {huge_ms / small_ms:8.1f}")
    with tempfile.TemporaryDirectory():
        turns = asyncio.run(bench_hung_store(args.turns))
    base = turns["redis healthy"][0]
    print(f"\n{'turn (guarded LLM, floor behind)':32} {'mean s':>10} {'x healthy':>9} {'cloud':>6}")
    for case, (mean_s, cloud) in turns.items():
        print(f"{case:32} {mean_s:10.3f} {mean_s / base:9.2f} {cloud:>3}/{args.turns}")


if __name__ == "__main__":
    main()
