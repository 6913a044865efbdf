"""The per-call health log and ``status`` read the same real store and say the same thing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.health_logger import HealthLogger
from plugins.observability.switches import SwitchEvent, SwitchTracker
from plugins.resilience.store import open_store
from plugins.resilience.types import BreakerState, Failure, FailureKind

ROOT = Path(__file__).resolve().parent.parent
CHAINS = {"tts": ["cartesia", "local-tts", "elevenlabs", "free-tts"]}


def _wire(store, interval_s: float = 3600.0) -> tuple[SwitchTracker, HealthLogger]:  # type: ignore[no-untyped-def]
    tracker = SwitchTracker(CHAINS)
    logger = HealthLogger(store, CHAINS, interval_s=interval_s, call_id="call-1")
    tracker.subscribe(logger.on_switch)
    return tracker, logger


async def test_quota_failure_logs_failure_switch_and_status(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    tracker, logger = _wire(store)
    quota = Failure(FailureKind.QUOTA_EXHAUSTED, "credits exhausted", status=402)
    with capture_logs() as logs:
        logger.start()
        for obs in (tracker, logger):
            obs.on_attempt("tts:cartesia", is_probe=False)
        state = await store.record_failure("tts:cartesia", quota)
        for obs in (tracker, logger):
            obs.on_failure("tts:cartesia", quota, state)
            obs.on_attempt("tts:local-tts", is_probe=False)
        await store.record_success("tts:local-tts", latency_s=0.04)
        for obs in (tracker, logger):
            obs.on_success("tts:local-tts", latency_s=0.04)
        await logger.aclose()
    events = [e["event"] for e in logs]
    assert events[0] == "TTS: cartesia → local-tts → elevenlabs → free-tts"
    assert "TTS provider cartesia failed: 402 Payment Required (quota exhausted)" in events
    assert "Falling back to TTS provider: local-tts" in events
    switch = next(e for e in logs if e["event"].startswith("Falling back"))
    assert switch["reason"] == "402 quota exhausted" and switch["from_provider"] == "cartesia"
    status = next(e for e in logs if e["event"].startswith("TTS provider status"))
    states = {p["provider"]: p["state"] for p in status["providers"]}
    assert states["cartesia"].startswith("quota-exhausted until ")
    assert states["local-tts"] == "active"
    await store.aclose()


def test_switch_tracker_tells_fallback_from_recovery() -> None:
    seen: list[SwitchEvent] = []
    tracker = SwitchTracker(CHAINS)
    tracker.subscribe(seen.append)
    tracker.on_attempt("tts:cartesia", is_probe=False)
    tracker.on_failure(
        "tts:cartesia", Failure(FailureKind.TIMEOUT, "no audio in 1.0 s"), BreakerState.CLOSED
    )
    tracker.on_attempt("tts:local-tts", is_probe=False)
    tracker.on_attempt("tts:cartesia", is_probe=True)  # a probe is not the call moving
    tracker.on_success("tts:cartesia", latency_s=0.1)
    assert [(e.from_provider, e.to_provider, e.reason, e.is_fallback) for e in seen] == [
        ("cartesia", "local-tts", "timeout", True),
        ("local-tts", "cartesia", "recovered", False),
    ]


@pytest.mark.parametrize(
    ("failure", "label"),
    [
        (Failure(FailureKind.RATE_LIMITED, "slow down", status=429, retry_after_s=120), "rate-limited until "),
        (Failure(FailureKind.KEY_REJECTED, "invalid key", status=401), "key-rejected"),
    ],
)  # fmt: skip
async def test_status_json_matches_the_store(tmp_path: Path, failure: Failure, label: str) -> None:
    store = open_store(None, tmp_path)
    await store.record_success("llm:openai", latency_s=0.2)
    await store.record_failure("llm:openai", failure)
    await store.aclose()
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (item,) = json.loads(proc.stdout)
    assert item["key"] == "llm:openai"
    assert item["requests"] == 2 and item["failures"] == 1
    assert item["last_failure"] == failure.kind.value
    assert item["label"].startswith(label)
    text = subprocess.run(
        [sys.executable, "-m", "agent", "status"], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path)},
        timeout=60,
    )  # fmt: skip
    assert "openai" in text.stdout and label.strip() in text.stdout
