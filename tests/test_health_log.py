"""The per-call health log against the simulators: after each fault class the failure, the
switch and the status table read right. ``status`` reads the same store and agrees."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.call import build_call_runtime
from agent.settings import load_settings
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import OpenAISimulator
from tests.guard_fixtures import ask, synthesize

ROOT = Path(__file__).resolve().parent.parent


async def test_tts_quota_logs_chain_failure_switch_and_status(tmp_path: Path) -> None:
    async with CartesiaSimulator() as sim:
        sim.state.plan.always(Fault(FaultType.QUOTA))
        settings = load_settings(
            data_dir=tmp_path, tts_providers="cartesia,local-tts,free-tts",
            cartesia_api_key="sim-key", cartesia_base_url=sim.base_url,
        )  # fmt: skip
        with capture_logs() as logs:
            runtime = build_call_runtime(settings, vad=None, call_id="call-1")
            assert len(await synthesize(runtime.tts, "Hello there.")) > 0
            assert len(await synthesize(runtime.tts, "How can I help?")) > 0
            await runtime.aclose()
    events = [e["event"] for e in logs]
    init = next(e for e in logs if e.get("health_event") == "chains")
    lines = init["event"].splitlines()
    assert lines[:2] == [
        "🔧 Provider Manager initialized:",
        "  TTS: cartesia → local-tts → free-tts",
    ]
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["TTS", "STT", "LLM"]
    assert init["chains"]["tts"] == ["cartesia", "local-tts", "free-tts"]
    assert events[events.index(init["event"]) + 1] == "🔊 Using TTS provider: cartesia"
    assert "🎤 Using STT provider: free-stt" in events or any(
        e.startswith("🎤 Using STT provider: ") for e in events
    )
    assert any(e.startswith("🧠 Using LLM provider: ") for e in events)
    # the seed's sequence, in order
    seq = [
        "❌ TTS provider cartesia failed: 402 Payment Required",
        "🔄 Falling back to TTS provider: local-tts",
        "🔊 Using TTS provider: local-tts",
    ]
    at = [events.index(line) for line in seq]
    assert at == sorted(at), events
    failed = logs[at[0]]
    assert failed["kind"] == "quota_exhausted" and failed["status"] == 402
    switch = logs[at[1]]
    assert switch["health_event"] == "fallback"
    assert switch["reason"] == "402 quota exhausted" and switch["from_provider"] == "cartesia"
    status = next(e for e in logs if e.get("health_event") == "status")
    tts_line = next(line for line in status["event"].splitlines() if "TTS:" in line)
    assert status["event"].startswith("📊 Provider Health Status:\n")
    compact = {p["provider"]: p["compact"] for p in status["status"]["tts"]}
    assert tts_line == "  TTS: " + " → ".join(f"{n} ({compact[n]})" for n in compact)
    states = {p["provider"]: p["state"] for p in status["status"]["tts"]}
    assert states["cartesia"].startswith("quota-exhausted until ")
    assert compact["cartesia"] == "failed"
    if compact["local-tts"] == "active":  # unless a loaded machine made it miss its deadline
        assert tts_line == "  TTS: cartesia (failed) → local-tts (active) → free-tts (available)"
    assert sim.state.log.count() == 1  # the second turn skipped Cartesia without a request
    usage = next(e for e in logs if e["event"].startswith("Usage:"))
    assert "tts:local-tts" in usage["event"]
    assert "tts:cartesia" not in usage["event"]  # a refused request is not billed


@pytest.mark.parametrize(
    ("fault", "failed_line", "state"),
    [
        (Fault(FaultType.STATUS, status=429, retry_after_s=120), "429 Too Many Requests", "rate-limited until "),
        (Fault(FaultType.STATUS, status=401), "401 Unauthorized", "key-rejected"),
        # the breaker is still closed, but a provider that just failed is not "available"
        (Fault(FaultType.STATUS, status=500), "500 Internal Server Error", "failing (1 in a row)"),
        (Fault(FaultType.HANG), "no first answer within", "failing (1 in a row)"),
    ],
    ids=["rate-limit", "key-rejected", "server-error", "hang"],
)  # fmt: skip
async def test_llm_fault_classes_in_the_health_log(
    tmp_path: Path, fault: Fault, failed_line: str, state: str
) -> None:
    async with OpenAISimulator() as sim:
        sim.state.plan.always(fault)
        settings = load_settings(
            data_dir=tmp_path, llm_providers="openai,free-llm",
            openai_api_key="sim-key", openai_base_url=sim.base_url,
        )  # fmt: skip
        with capture_logs() as logs:
            runtime = build_call_runtime(settings, vad=None, call_id="call-2")
            assert await ask(runtime.llm, "How much does it cost?")  # answered by free-llm
            await runtime.aclose()
    failed = [e["event"] for e in logs if e["event"].startswith("❌ LLM provider openai failed: ")]
    assert failed and failed_line in failed[0], failed
    assert "🔄 Falling back to LLM provider: free-llm" in [e["event"] for e in logs]
    status = next(e for e in logs if e.get("health_event") == "status")
    states = {p["provider"]: p["state"] for p in status["status"]["llm"]}
    assert states["openai"].startswith(state), states
    assert states["free-llm"] == "active"

    # ``status`` reads the same store and says the same.
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (item,) = [i for i in json.loads(proc.stdout) if i["key"] == "llm:openai"]
    assert item["label"].startswith(state)
    assert item["failures"] >= 1


async def test_compact_status_comes_on_every_interval_and_is_honest(tmp_path: Path) -> None:
    from agent.health_logger import HealthLogger
    from plugins.resilience.store import open_store
    from plugins.resilience.types import Failure, FailureKind

    store = open_store(None, tmp_path)
    await store.record_failure("llm:openai", Failure(FailureKind.SERVER_ERROR, "500", status=500))
    chains = {"llm": ["openrouter", "openai", "free-llm"], "tts": ["free-tts"]}
    with capture_logs() as logs:
        health = HealthLogger(store, chains, interval_s=0.05, call_id="c")
        health.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while sum(e.get("health_event") == "status" for e in logs) < 2:
            assert loop.time() < deadline, "no periodic status"
            await asyncio.sleep(0.02)
        await health.aclose()
    status = next(e for e in logs if e.get("health_event") == "status")
    assert status["event"] == (
        "📊 Provider Health Status:\n"
        "  TTS: free-tts (active)\n"
        # openai's breaker is still closed, but its last attempt failed: not "available"
        "  LLM: openrouter (active) → openai (failing) → free-llm (available)"
    )
    assert status["status"]["llm"][1]["state"] == "failing (1 in a row)"
    await store.aclose()


def test_json_mode_lines_are_structured_events(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    import structlog

    from agent.health_logger import HealthLogger
    from agent.logs import install_handler
    from plugins.observability.switches import SwitchEvent

    before_config = structlog.get_config()
    install_handler(fmt="json", level="INFO")
    structlog.configure(cache_logger_on_first_use=False)  # later tests capture logs
    try:
        health = HealthLogger(None, {"tts": ["cartesia", "local-tts"]}, call_id="c-9")  # type: ignore[arg-type]
        health.on_switch(SwitchEvent(1.0, "tts", "cartesia", "local-tts", "402 quota exhausted"))
    finally:
        logging.getLogger().handlers = [
            h for h in logging.getLogger().handlers if h.get_name() != "never-silent"
        ]
        structlog.configure(**before_config)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    fallback = next(e for e in lines if e.get("health_event") == "fallback")
    assert fallback["event"] == "🔄 Falling back to TTS provider: local-tts"
    assert fallback["slot"] == "tts" and fallback["to_provider"] == "local-tts"
    assert fallback["from_provider"] == "cartesia" and fallback["call_id"] == "c-9"
    using = next(e for e in lines if e.get("health_event") == "using")
    assert (using["slot"], using["provider"]) == ("tts", "local-tts")
