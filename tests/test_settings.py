"""Settings: defaults follow DESIGN.md, every bad value stops start-up with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
_ALL_VARS = [
    "TTS_PROVIDERS", "STT_PROVIDERS", "LLM_PROVIDERS", "ENCRYPTION_KEY", "HEALTH_CHECK_INTERVAL",
    "CARTESIA_BASE_URL", "CARTESIA_API_KEY", "OPENAI_API_KEY", "REDIS_URL", "LIVEKIT_URL",
    "METRICS_PORT", "DEEPGRAM_API_KEY", "OPENROUTER_API_KEY", "ELEVENLABS_API_KEY",
    "GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "LLM_FIRST_TOKEN_TIMEOUT",
    "PROVIDER_BUDGETS_USD", "PROVIDER_PRICES_USD",
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in _ALL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_follow_the_design_table() -> None:
    s = load_settings()
    assert s.tts_providers == ["cartesia", "local-tts", "elevenlabs", "free-tts"]
    assert s.stt_providers == ["deepgram", "google", "whisper", "local-stt", "free-stt"]
    assert s.llm_providers == ["openrouter", "openai", "google", "free-llm"]
    assert s.health_check_interval == 30
    assert s.llm_first_token_timeout <= 1.0 and s.tts_first_audio_timeout <= 1.0


def test_order_is_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_PROVIDERS", " ElevenLabs , free-tts,cartesia")
    monkeypatch.setenv("ELEVENLABS_API_KEY", "sim-key")
    monkeypatch.setenv("CARTESIA_BASE_URL", "http://127.0.0.1:9999/")
    s = load_settings()
    specs = s.provider_specs("tts")
    assert [p.name for p in specs] == ["elevenlabs", "free-tts", "cartesia"]
    assert specs[0].api_key == "sim-key"
    assert specs[2].base_url == "http://127.0.0.1:9999"
    assert specs[2].api_key is None


def test_dotenv_with_empty_values_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    s = load_settings()
    assert s.metrics_port is None and s.cartesia_base_url is None


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("TTS_PROVIDERS", "cartsia,free-tts", "Invalid setting TTS_PROVIDERS: names unknown TTS provider 'cartsia'; choose from"),
        ("STT_PROVIDERS", "", None),  # empty is ignored -> defaults
        ("LLM_PROVIDERS", "openai,openai", "Invalid setting LLM_PROVIDERS: lists a provider twice"),
        ("CARTESIA_BASE_URL", "not a url", "Invalid setting CARTESIA_BASE_URL: is not a valid URL"),
        ("ENCRYPTION_KEY", "too-short", "Invalid setting ENCRYPTION_KEY: must be exactly 32 characters (it has 9)"),
        ("HEALTH_CHECK_INTERVAL", "-5", "Invalid setting HEALTH_CHECK_INTERVAL: is out of range"),
        ("HEALTH_CHECK_INTERVAL", "soon", "Invalid setting HEALTH_CHECK_INTERVAL: is not a number"),
        ("REDIS_URL", "localhost:6379", "Invalid setting REDIS_URL: must start with redis://"),
        ("LIVEKIT_URL", "livekit.example.com", "Invalid setting LIVEKIT_URL: must start with wss://"),
        ("GOOGLE_APPLICATION_CREDENTIALS", "/nope/creds.json", "Invalid setting GOOGLE_APPLICATION_CREDENTIALS: points to '/nope/creds.json', which is not a file"),
    ],
)  # fmt: skip
def test_bad_value_gives_one_line(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str | None
) -> None:
    monkeypatch.setenv(var, value)
    if expected is None:
        load_settings()
        return
    with pytest.raises(SettingsError) as e:
        load_settings()
    message = str(e.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_secret_values_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "0123456789abcdef-not-32"
    monkeypatch.setenv("ENCRYPTION_KEY", secret)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert secret not in str(e.value)
    s = Settings(encryption_key=None)
    assert "sk-test-secret-value" not in repr(s)
    assert "sk-test-secret-value" not in repr(s.provider_specs("llm"))


def test_bad_setting_stops_the_cli_with_exit_2_and_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TTS_PROVIDERS": "cartesia,nonsense", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "console", "--text"],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Invalid setting TTS_PROVIDERS: names unknown TTS provider 'nonsense'; "
        "choose from cartesia, local-tts, elevenlabs, free-tts"
    ]


def test_budgets_and_prices_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_BUDGETS_USD", "tts:cartesia=50, llm:OpenAI=20.5")
    monkeypatch.setenv("PROVIDER_PRICES_USD", "tts:elevenlabs=0.0003")
    s = load_settings()
    assert s.provider_budgets_usd == {"tts:cartesia": 50.0, "llm:openai": 20.5}
    assert s.provider_prices_usd == {"tts:elevenlabs": 0.0003}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("cartesia=50", "names unknown provider 'cartesia'; write slot:provider"),
        ("tts:cartesia", "entry 'tts:cartesia' has no '='"),
        ("tts:cartesia=lots", "amount for tts:cartesia is not a number"),
        ("tts:cartesia=-1", "amount for tts:cartesia is negative"),
    ],
)
def test_bad_budget_names_the_problem(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("PROVIDER_BUDGETS_USD", value)
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert str(e.value).startswith(f"Invalid setting PROVIDER_BUDGETS_USD: {expected}")
