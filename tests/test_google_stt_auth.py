"""Google STT with the seed's GOOGLE_API_KEY or a service account, and ``doctor`` saying which.

Speech-to-Text v1 accepts an API key; v2 addresses a recognizer inside a project, so it needs
a service account. The real plugin, built by the catalog, streams to the gRPC simulator.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from google.auth import api_key
from livekit import rtc
from livekit.agents import APIConnectOptions, stt
from livekit.plugins import google

from agent.ops.doctor import _check_spec
from agent.settings import load_settings
from plugins.catalog import CATALOG
from plugins.providers.definition import BuildContext, ProviderUnusableError
from plugins.providers.google import google_stt_auth
from plugins.sim.google_stt_sim import GoogleSttSimulator, SimulatedGoogleSTT
from plugins.sim.tts_audio import speak
from plugins.spec import ProviderSpec

RATE = 16000


def _key() -> str:
    return "AIza" + "x" * 35  # key-shaped, built at run time


def _service_account(tmp_path: Path) -> Path:
    path = tmp_path / "sa.json"
    fields = {"type": "service_account", "client_email": "a@b.iam", "private_key": "k"}
    path.write_text(json.dumps(fields))
    return path


def _build(spec: ProviderSpec) -> stt.STT[object]:
    return CATALOG.lookup("stt", "google").build(spec, BuildContext())  # type: ignore[return-value]


def test_api_key_is_used_when_there_is_no_service_account() -> None:
    spec = ProviderSpec("stt", "google", model="latest_long", api_key=_key())
    assert google_stt_auth(spec) == ("api-key", spec.api_key)
    plugin = _build(spec)
    assert type(plugin) is google.STT
    assert isinstance(plugin._credentials, api_key.Credentials)  # the plugin's public argument


def test_service_account_wins_over_the_api_key(tmp_path: Path) -> None:
    sa = str(_service_account(tmp_path))
    spec = ProviderSpec("stt", "google", api_key=_key(), extra={"credentials_file": sa})
    assert google_stt_auth(spec) == ("service-account", sa)


def test_v2_model_with_only_an_api_key_is_refused_clearly() -> None:
    spec = ProviderSpec("stt", "google", model="chirp_2", api_key=_key())
    with pytest.raises(ProviderUnusableError, match="needs a service account"):
        _build(spec)


def test_no_credential_at_all_names_both_settings() -> None:
    with pytest.raises(
        ProviderUnusableError, match=r"GOOGLE_APPLICATION_CREDENTIALS.*GOOGLE_API_KEY"
    ):
        google_stt_auth(ProviderSpec("stt", "google"))


async def test_api_key_plugin_streams_to_the_simulator() -> None:
    pcm = speak("please call me back tomorrow", RATE)
    audio = np.concatenate([np.zeros(RATE // 4, np.int16), pcm, np.zeros(RATE, np.int16)])
    async with GoogleSttSimulator() as sim:
        spec = ProviderSpec("stt", "google", sim.grpc_target, "latest_long", api_key=_key())
        plugin = _build(spec)
        assert isinstance(plugin, SimulatedGoogleSTT)
        stream = plugin.stream(conn_options=APIConnectOptions(max_retry=0, timeout=5.0))
        for i in range(0, audio.size - 320, 320):
            stream.push_frame(rtc.AudioFrame(audio[i : i + 320].tobytes(), RATE, 1, 320))
        stream.end_input()
        finals: list[str] = []

        async def consume() -> None:
            async for ev in stream:
                if ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT and ev.alternatives:
                    finals.append(ev.alternatives[0].text)

        await asyncio.wait_for(consume(), 30)
        await stream.aclose()
        await plugin.aclose()
    assert "tomorrow" in " ".join(finals)


@pytest.mark.parametrize("which", ["service-account", "api-key", "neither", "v2-api-key"])
async def test_doctor_says_which_credential_is_in_use_and_what_is_missing(
    tmp_path: Path, which: str
) -> None:
    env: dict[str, object] = {"data_dir": tmp_path, "google_api_key": None}
    if which == "service-account":
        env["google_application_credentials"] = _service_account(tmp_path)
        env["google_api_key"] = _key()
    elif which in ("api-key", "v2-api-key"):
        env["google_api_key"] = _key()
        if which == "v2-api-key":
            env["google_stt_model"] = "chirp_2"
    settings = load_settings(**env)
    spec = next(s for s in settings.provider_specs("stt") if s.name == "google")
    async with aiohttp.ClientSession() as http:
        finding = await _check_spec(spec, http)
    text = finding.text
    if which in ("service-account", "api-key"):
        assert finding.ok and "looks valid" in text, text
        assert "GOOGLE_APPLICATION_CREDENTIALS" in text
        assert _key() not in text  # never shown
    elif which == "neither":
        assert finding.ok and "skipped" in text and "GOOGLE_API_KEY" in text
    else:
        assert not finding.ok and "needs a service account" in text
