"""How settings become a call's chains: price overrides, cheapest-first, deadlines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.call import call_specs, cheapest_first, deadline_settings
from agent.settings import load_settings
from plugins.spec import ProviderSpec

ROOT = Path(__file__).resolve().parent.parent


def test_cheapest_first_sorts_neighbouring_cloud_providers_only() -> None:
    price = {"cartesia": 3.0, "elevenlabs": 1.0, "local-tts": 0.0, "free-tts": 0.0}
    specs = [ProviderSpec("tts", n) for n in ("cartesia", "elevenlabs", "local-tts", "free-tts")]
    ordered = cheapest_first(specs, lambda s: price[s.name])
    assert [s.name for s in ordered] == ["elevenlabs", "cartesia", "local-tts", "free-tts"]
    # a local provider between cloud ones is a deliberate choice: the sort does not cross it
    specs = [ProviderSpec("tts", n) for n in ("cartesia", "local-tts", "elevenlabs", "free-tts")]
    ordered = cheapest_first(specs, lambda s: price[s.name])
    assert [s.name for s in ordered] == ["cartesia", "local-tts", "elevenlabs", "free-tts"]


def test_prefer_cheapest_and_price_overrides_from_settings(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        stt_providers="deepgram,google,whisper,free-stt",
        prefer_cheapest=True,
        provider_prices_usd="stt:deepgram=0.001",
    )
    stt = [s for s in call_specs(settings) if s.slot == "stt"]
    # catalog prices per audio second: whisper 0.0001, google 0.00027; deepgram set to 0.001
    assert [s.name for s in stt] == ["whisper", "google", "deepgram", "free-stt"]
    assert next(s for s in stt if s.name == "deepgram").extra["price_per_unit_usd"] == "0.001"


def test_deadline_ceilings_follow_settings(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, llm_first_token_timeout=0.2, tts_first_audio_timeout=0.6
    )
    limits = deadline_settings(settings)
    assert limits["llm"].ceiling_s == 0.2 and limits["llm"].floor_s <= 0.2
    assert limits["tts"].ceiling_s == 0.6


@pytest.mark.timeout(120)
def test_audio_console_without_devices_says_so_in_one_line(tmp_path: Path) -> None:
    from agent.console_check import audio_console_problem

    if audio_console_problem() is None:
        pytest.skip("this machine has a microphone and a speaker: the audio console can run")
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "console"],
        cwd=tmp_path, capture_output=True, text=True, timeout=100,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "console --text" in lines[0]
