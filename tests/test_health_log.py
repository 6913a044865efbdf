"""The per-call health log against the simulators: after each fault class the failure, the
switch and the status table read right. ``status`` reads the same store and agrees."""

from __future__ import annotations

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
    assert "TTS: cartesia → local-tts → free-tts" in events
    assert "TTS provider cartesia failed: 402 Payment Required (quota exhausted)" in events
    assert "Falling back to TTS provider: local-tts" in events
    switch = next(e for e in logs if e["event"].startswith("Falling back"))
    assert switch["reason"] == "402 quota exhausted" and switch["from_provider"] == "cartesia"
    status = next(e for e in logs if e["event"].startswith("TTS provider status"))
    states = {p["provider"]: p["state"] for p in status["providers"]}
    assert states["cartesia"].startswith("quota-exhausted until ")
    assert states["local-tts"] == "active"
    assert sim.state.log.count() == 1  # the second turn skipped Cartesia without a request
    usage = next(e for e in logs if e["event"].startswith("Usage:"))
    assert "tts:local-tts" in usage["event"]
    assert "tts:cartesia" not in usage["event"]  # a refused request is not billed


@pytest.mark.parametrize(
    ("fault", "failed_line", "state"),
    [
        (Fault(FaultType.STATUS, status=429, retry_after_s=120), "429 Too Many Requests (rate limited)", "rate-limited until "),
        (Fault(FaultType.STATUS, status=401), "401 Unauthorized (key rejected)", "key-rejected"),
        (Fault(FaultType.STATUS, status=500), "500 Internal Server Error (server error)", "available"),
        (Fault(FaultType.HANG), "no first answer within", "available"),
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
    failed = [e["event"] for e in logs if e["event"].startswith("LLM provider openai failed: ")]
    assert failed and failed_line in failed[0], failed
    assert "Falling back to LLM provider: free-llm" in [e["event"] for e in logs]
    status = next(e for e in logs if e["event"].startswith("LLM provider status"))
    states = {p["provider"]: p["state"] for p in status["providers"]}
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
