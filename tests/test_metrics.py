"""Metrics from a call's job process reach the worker's /metrics through LiveKit's
multiprocess collector: a real call in a child process, a real HTTP scrape."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import pytest
from livekit.agents.telemetry.http_server import HttpServer
from prometheus_client.parser import text_string_to_metric_families

from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.faults import Fault, FaultType

ROOT = Path(__file__).resolve().parent.parent

CALL = """
import asyncio
from agent.call import build_call_runtime
from agent.settings import load_settings

async def main() -> None:
    runtime = build_call_runtime(load_settings(), vad=None, call_id="metrics-call")
    for text in ("Hello there.", "How can I help?", "Goodbye."):
        async for _ in runtime.tts.synthesize(text):
            pass
    await runtime.aclose()

asyncio.run(main())
"""


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_quota_failure_and_skips_are_scraped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    async with CartesiaSimulator() as sim:
        sim.state.plan.always(Fault(FaultType.QUOTA))
        env = {
            "PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "DATA_DIR": str(tmp_path / "data"),
            "TTS_PROVIDERS": "cartesia,free-tts",
            "CARTESIA_API_KEY": "sim-key", "CARTESIA_BASE_URL": sim.base_url,
        }  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CALL, cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, out.decode()[-3000:]
        cartesia_requests = sim.state.log.count()

    # The worker process serves what every job process wrote (LiveKit's own metrics server).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    server = HttpServer("127.0.0.1", unused_tcp_port)
    await server.start()
    try:
        url = f"http://127.0.0.1:{unused_tcp_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 200
            text = await resp.text()
    finally:
        await server.aclose()
    samples = _samples(text)
    tts = {"slot": "tts", "provider": "cartesia"}
    assert _value(samples, "voice_provider_requests_total", probe="no", **tts) == 1
    assert cartesia_requests == 1  # the only request Cartesia saw
    assert _value(samples, "voice_provider_failures_total", kind="quota_exhausted", **tts) == 1
    assert _value(samples, "voice_provider_skips_total", state="open", **tts) == 2
    assert _value(samples, "voice_provider_breaker_state", state="open", **tts) == 1
    assert "sim-key" not in text  # no secret in any label
