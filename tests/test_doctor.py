"""``doctor`` against the simulators: a rejected key, an exhausted quota and healthy providers
are each reported correctly, keys only masked, exit 1 when anything is wrong."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.crm.ghl_sim import GhlSimulator
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.deepgram_sim import DeepgramSimulator
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.sim.gemini_sim import GeminiSimulator
from plugins.sim.openai_sim import OpenAISimulator

ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = "sim-key-0123456789"
# What `start` needs besides providers: doctor reports each missing one as a problem.
WORKER = {
    "LIVEKIT_URL": "wss://example.livekit.cloud",
    "LIVEKIT_API_KEY": "sim-livekit-key",
    "LIVEKIT_API_SECRET": "sim-livekit-secret-0123456789",
    "ENCRYPTION_KEY": "0123456789abcdef0123456789abcdef",
}


@pytest.fixture
async def sims() -> AsyncIterator[dict[str, object]]:
    started = {
        "openai": OpenAISimulator(),
        "openrouter": OpenAISimulator(flavor="openrouter"),
        "gemini": GeminiSimulator(),
        "cartesia": CartesiaSimulator(),
        "elevenlabs": ElevenLabsSimulator(character_limit=10_000),
        "deepgram": DeepgramSimulator(),
        "ghl": GhlSimulator(api_key=GOOD_KEY),
    }
    for sim in started.values():
        await sim.start()  # type: ignore[attr-defined]
    yield started
    for sim in started.values():
        await sim.aclose()  # type: ignore[attr-defined]


async def _doctor(env: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "doctor",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), **env},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_doctor_reports_each_provider(sims: dict[str, object], tmp_path: Path) -> None:
    eleven = sims["elevenlabs"]
    assert isinstance(eleven, ElevenLabsSimulator)
    eleven.characters_used = eleven.character_limit  # quota used up this month
    openrouter = sims["openrouter"]
    assert isinstance(openrouter, OpenAISimulator)
    openrouter.credit_usd = (3.5, 10.0)
    url = {name: sim.base_url for name, sim in sims.items()}  # type: ignore[attr-defined]
    env = {
        "OPENAI_API_KEY": GOOD_KEY, "OPENAI_BASE_URL": url["openai"],
        "OPENROUTER_API_KEY": GOOD_KEY, "OPENROUTER_BASE_URL": url["openrouter"],
        "GOOGLE_API_KEY": GOOD_KEY, "GOOGLE_BASE_URL": url["gemini"],
        "CARTESIA_API_KEY": "bad-key", "CARTESIA_BASE_URL": url["cartesia"],
        "ELEVENLABS_API_KEY": GOOD_KEY, "ELEVENLABS_BASE_URL": url["elevenlabs"],
        "DEEPGRAM_API_KEY": GOOD_KEY, "DEEPGRAM_BASE_URL": url["deepgram"],
        "GHL_API_KEY": GOOD_KEY, "GHL_BASE_URL": url["ghl"], "GHL_LOCATION_ID": "sim-location",
        **WORKER,
    }  # fmt: skip
    code, out = await _doctor(env, tmp_path)
    lines = {line.split()[1]: line for line in out.splitlines() if line[:3] in ("ok ", "BAD")}
    assert code == 1, out
    assert lines["tts:cartesia"].startswith("BAD"), out
    assert "key …**** was rejected (401)" in lines["tts:cartesia"]
    assert lines["tts:elevenlabs"].startswith("BAD")
    assert "character quota used up until" in lines["tts:elevenlabs"]
    assert lines["llm:openrouter"].startswith("ok ") and "6.50 usd left" in lines["llm:openrouter"]
    for healthy in ("llm:openai", "llm:google", "stt:deepgram", "stt:whisper", "crm:ghl"):
        assert lines[healthy].startswith("ok "), out
    assert lines["tts:free-tts"].startswith("ok ")
    assert GOOD_KEY not in out  # keys are shown masked only
    assert "sim…6789" in out
    assert out.strip().endswith("2 problems found")


async def test_doctor_all_good_exits_zero(sims: dict[str, object], tmp_path: Path) -> None:
    url = sims["openai"].base_url  # type: ignore[attr-defined]
    code, out = await _doctor(
        {"OPENAI_API_KEY": GOOD_KEY, "OPENAI_BASE_URL": url, **WORKER}, tmp_path
    )
    assert code == 0, out
    assert out.strip().endswith("All good.")
    assert "skipped: DEEPGRAM_API_KEY not set" in out  # the others: not configured, named
