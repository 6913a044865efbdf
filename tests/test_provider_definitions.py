"""One definition per provider: settings, builders, docs, doctor and simulate agree with it.

Every default (model, voice, base URL, option) is written once, in the provider's definition;
these tests fail if a second copy appears anywhere that disagrees, or if a setting is dead
(declared but never reaching the plugin).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.settings import Settings, load_settings
from agent.simulate.scenarios import SIM_PROVIDERS, SIMULATORS
from agent.simulate.simulators import SIM_KEY, sim_settings
from plugins.catalog import CATALOG, SLOTS
from plugins.providers.definition import BuildContext, Option, Provider
from plugins.spec import ProviderSpec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    for option in CATALOG.options():
        monkeypatch.delenv(option.env, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    return load_settings()


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "service-account.json"
    path.write_text(
        json.dumps({"type": "service_account", "client_email": "a@b.c", "private_key": "x"})
    )
    return path


def _build(provider: Provider, spec: ProviderSpec) -> Any:
    return provider.build(spec, BuildContext())


def _keyed(spec: ProviderSpec, credentials: Path) -> ProviderSpec:
    """``spec`` with a stand-in key (Google STT: a credentials file) so it can be built."""
    if spec.key == "stt:google":
        key = str(credentials)
    else:
        key = "test-key" if CATALOG.lookup(spec.slot, spec.name).needs_key else None
    return ProviderSpec(
        spec.slot, spec.name, spec.base_url, spec.model, spec.voice, key, spec.extra
    )


def test_settings_defaults_are_the_definitions_defaults(settings: Settings) -> None:
    for option in CATALOG.options():
        assert settings.option(option) == option.default, option.env
    # the two that used to disagree between settings and the catalog
    assert settings.option(CATALOG.lookup("llm", "google").model) == "gemini-2.5-flash"  # type: ignore[arg-type]
    assert settings.option(CATALOG.lookup("tts", "elevenlabs").model) == "eleven_flash_v2_5"  # type: ignore[arg-type]


@pytest.mark.parametrize("provider", CATALOG.providers.values(), ids=lambda p: p.id)
def test_default_model_reaches_the_plugin_from_settings_and_from_a_bare_spec(
    provider: Provider, settings: Settings, credentials: Path
) -> None:
    """The plugin built from default settings and from a spec with no model say the same."""
    configured = next(s for s in settings.provider_specs(provider.slot) if s.name == provider.name)
    from_settings = _build(provider, _keyed(configured, credentials))
    bare = _build(provider, _keyed(ProviderSpec(provider.slot, provider.name), credentials))
    assert from_settings.model == bare.model
    if provider.default_model is not None:
        assert from_settings.model == provider.default_model


def test_every_provider_setting_reaches_its_plugin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, credentials: Path
) -> None:
    """No dead settings: a changed model, voice, region or language shows in the plugin."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    monkeypatch.setenv("GOOGLE_STT_LOCATION", "eu")
    monkeypatch.setenv("GOOGLE_STT_MODEL", "chirp_2")
    monkeypatch.setenv("STT_LANGUAGE", "de-DE")
    monkeypatch.setenv("FREE_TTS_VOICE", "de")
    monkeypatch.setenv("CARTESIA_API_KEY", "test-key")
    monkeypatch.setenv("CARTESIA_VOICE", "voice-under-test")
    monkeypatch.setenv("ELEVENLABS_API_KEY", "test-key")
    monkeypatch.setenv("ELEVENLABS_MODEL", "eleven_multilingual_v2")
    monkeypatch.setenv("GOOGLE_API_KEY", "test-key")
    monkeypatch.setenv("GOOGLE_LLM_MODEL", "gemini-2.5-pro")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "test-key")
    s = load_settings()

    def built(slot: str, name: str) -> Any:
        spec = next(x for x in s.provider_specs(slot) if x.name == name)  # type: ignore[arg-type]
        return _build(CATALOG.lookup(spec.slot, spec.name), spec)

    google_stt = built("stt", "google")
    assert google_stt.model == "chirp_2"
    assert google_stt._location == "eu"  # the plugin keeps the region privately
    assert google_stt._config.languages == ["de-DE"]
    assert built("stt", "whisper")._opts.languages == ["de"]  # Whisper takes ISO-639-1
    assert built("stt", "deepgram")._opts.language == "de-DE"
    assert built("tts", "free-tts").model == "de"
    assert built("tts", "cartesia")._opts.voice == "voice-under-test"
    assert built("tts", "elevenlabs").model == "eleven_multilingual_v2"
    assert built("llm", "google").model == "gemini-2.5-pro"


def test_env_example_documents_every_provider_setting_with_its_default() -> None:
    text = (ROOT / ".env.example").read_text()
    for option in CATALOG.options():
        assert f"# {option.help}\n{option.env}={option.default or ''}\n" in text, option.env
    assert "LOCAL_TTS_VOICE" not in text  # removed: hibari has one bundled voice


def test_every_cloud_provider_has_a_simulator_and_simulate_points_it_there(
    settings: Settings, tmp_path: Path
) -> None:
    cloud = [p for p in CATALOG.providers.values() if not p.local and p.id != "stt:google"]
    assert {p.id for p in cloud} <= {
        f"{s}:{n}" for sim in SIMULATORS for s, n in SIM_PROVIDERS[sim]
    }
    urls = {name: f"http://127.0.0.1:9/{name}" for name in SIMULATORS}
    aimed = sim_settings(settings, urls, tmp_path)
    for provider in cloud:
        assert provider.simulator is not None
        spec = next(s for s in aimed.provider_specs(provider.slot) if s.name == provider.name)
        assert spec.api_key == SIM_KEY, provider.id
        assert spec.base_url == urls[provider.simulator.name], provider.id


def test_spec_lists_and_worker_imports_are_derived() -> None:
    assert CATALOG.default_order == {
        "stt": ("deepgram", "google", "whisper", "local-stt", "free-stt"),
        "llm": ("openrouter", "openai", "google", "free-llm"),
        "tts": ("cartesia", "local-tts", "elevenlabs", "free-tts"),
    }
    assert CATALOG.floors == {"stt": "free-stt", "llm": "free-llm", "tts": "free-tts"}
    assert CATALOG.local_names == {"local-stt", "free-stt", "free-llm", "local-tts", "free-tts"}
    for slot in SLOTS:
        assert CATALOG.floor(slot) == CATALOG.default_order[slot][-1]
    modules = CATALOG.plugin_modules()
    for provider in CATALOG.providers.values():
        if not provider.local:
            assert provider.plugin_modules and set(provider.plugin_modules) <= set(modules)


def test_providers_sharing_a_setting_declare_the_same_one() -> None:
    by_env: dict[str, Option] = {}
    for provider in CATALOG.providers.values():
        for option in provider.settings_options():
            assert by_env.setdefault(option.env, option) == option
    whisper, openai = CATALOG.lookup("stt", "whisper"), CATALOG.lookup("llm", "openai")
    assert whisper.api_key is openai.api_key and whisper.base_url is openai.base_url


async def test_status_lists_every_configured_provider_before_its_first_call(
    settings: Settings, tmp_path: Path
) -> None:
    from agent.ops.status import read_status

    local = settings.model_copy(update={"data_dir": tmp_path, "redis_url": None})
    statuses = await read_status(local.with_options({"CARTESIA_API_KEY": "test-key"}))
    keys = [s.key for s in statuses]
    assert keys == [f"{slot}:{n}" for slot in SLOTS for n in CATALOG.default_order[slot]]
    rows = {s.key: s.row.state for s in statuses}
    assert rows["tts:cartesia"] == "not used yet"
    assert rows["tts:elevenlabs"] == "no key (ELEVENLABS_API_KEY not set)"
    assert rows["tts:free-tts"] == "not used yet"
