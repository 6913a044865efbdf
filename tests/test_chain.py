"""build_chains: order, skipping, the local floor, and plain LiveKit objects out."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from livekit.agents import llm, stt, tts
from livekit.plugins import silero

from plugins.catalog import CATALOG
from plugins.chain import build_chains
from plugins.providers.definition import ProviderUnusableError
from plugins.resilience.guard_llm import GuardedLLM
from plugins.resilience.guard_stt import GuardedSTT
from plugins.resilience.guard_tts import GuardedTTS
from plugins.resilience.store import DocumentStore
from plugins.spec import ProviderSpec
from tests.guard_fixtures import FakeClock, ask, clock, store, synthesize

__all__ = ["clock", "store"]


def _default_specs(keys: dict[str, str]) -> list[ProviderSpec]:
    return [
        ProviderSpec(slot, name, api_key=keys.get(f"{slot}:{name}"))
        for slot, names in CATALOG.default_order.items()
        for name in names
    ]


async def test_catalog_covers_every_default_provider() -> None:
    for slot, names in CATALOG.default_order.items():
        for name in names:
            entry = CATALOG.lookup(slot, name)
            assert entry.slot == slot and entry.cost_unit
            assert entry.local is (not entry.needs_key)


async def test_no_keys_gives_local_chains_with_one_skip_line_each(
    store: DocumentStore, clock: FakeClock
) -> None:
    with structlog.testing.capture_logs() as logs:
        chains = build_chains(_default_specs({}), store, clock=clock, probes=False)
    skipped = [e for e in logs if e["event"] == "provider skipped"]
    cloud = [k for k, e in CATALOG.providers.items() if e.needs_key]
    # local-stt (Whisper) is batch-only: without a VAD to cut utterances it is skipped too
    assert sorted(e["provider"] for e in skipped) == sorted([*cloud, "stt:local-stt"])
    assert chains.order == {
        "stt": ["stt:free-stt"],
        "llm": ["llm:free-llm"],
        "tts": ["tts:local-tts", "tts:free-tts"],
    }
    assert isinstance(chains.stt, stt.FallbackAdapter)
    assert isinstance(chains.llm, llm.FallbackAdapter)
    assert isinstance(chains.tts, tts.FallbackAdapter)
    assert await ask(chains.llm, "hello")  # answers with no network at all
    assert len(await synthesize(chains.tts, "Hello.")) > 0
    await chains.aclose()


async def test_keys_enable_guarded_cloud_providers_in_order_floor_last(
    store: DocumentStore, clock: FakeClock
) -> None:
    specs = [
        ProviderSpec("tts", "free-tts"),  # listed first, still ends the chain
        ProviderSpec("tts", "cartesia", api_key="sim-key"),
        ProviderSpec("tts", "local-tts"),  # the seed's order: local neural voice second
        ProviderSpec("tts", "elevenlabs", api_key="sim-key"),
        ProviderSpec("llm", "openai", api_key="sim-key", base_url="http://127.0.0.1:9/v1"),
        ProviderSpec(
            "llm",
            "openrouter",
            api_key="sim-key",
            extra={"app_name": "Never Silent", "app_url": "https://example.com"},
        ),
        ProviderSpec("llm", "google", api_key="sim-key"),
        ProviderSpec("stt", "deepgram", api_key="sim-key"),
    ]
    chains = build_chains(specs, store, clock=clock, probes=False)
    assert chains.order["tts"] == [
        "tts:cartesia",
        "tts:local-tts",
        "tts:elevenlabs",
        "tts:free-tts",
    ]
    assert chains.order["llm"] == ["llm:openai", "llm:openrouter", "llm:google", "llm:free-llm"]
    assert chains.order["stt"] == ["stt:deepgram", "stt:free-stt"]
    assert isinstance(chains.guards["tts:cartesia"], GuardedTTS)
    assert isinstance(chains.guards["llm:google"], GuardedLLM)
    assert isinstance(chains.guards["stt:deepgram"], GuardedSTT)
    assert "tts:free-tts" not in chains.guards  # the floor is never guarded off
    await chains.aclose()


async def test_whisper_needs_a_vad_and_is_wrapped_with_one(
    store: DocumentStore, clock: FakeClock
) -> None:
    spec = ProviderSpec("stt", "whisper", api_key="sim-key", base_url="http://127.0.0.1:9/v1")
    without = build_chains([spec], store, clock=clock, probes=False)
    assert "stt:whisper" in without.skipped and without.order["stt"] == ["stt:free-stt"]
    with_vad = build_chains([spec], store, vad=silero.VAD.load(), clock=clock, probes=False)
    assert with_vad.order["stt"] == ["stt:whisper", "stt:free-stt"]
    assert not with_vad.guards["stt:whisper"].capabilities.streaming
    await without.aclose()
    await with_vad.aclose()


async def test_google_stt_without_credentials_is_skipped(
    store: DocumentStore, clock: FakeClock, tmp_path: Path
) -> None:
    missing = ProviderSpec("stt", "google", extra={"credentials_file": str(tmp_path / "no.json")})
    chains = build_chains([missing], store, clock=clock, probes=False)
    assert "credentials" in chains.skipped["stt:google"]
    await chains.aclose()


async def test_unknown_provider_names_the_choices(store: DocumentStore) -> None:
    with pytest.raises(ProviderUnusableError, match="cartesia"):
        build_chains([ProviderSpec("tts", "nope")], store)
