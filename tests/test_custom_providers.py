"""Custom providers, without editing the project: in code (a spec with a factory) and as an
installed package declaring a ``never_silent.providers`` entry point.

The package test installs ``examples/openai-compatible-tts`` the way a user would (``uv pip
install``, built offline with flit-core from the dev group) into a throwaway directory, so the
shared environment stays clean, and runs the agent's own CLI with that directory on its path:
the provider's name then works in ``TTS_PROVIDERS``, ``doctor`` and ``status``, and a whole
simulated call is spoken by it, first in the chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from livekit.plugins import openai

from plugins.catalog import ENTRY_POINT_GROUP, load_catalog
from plugins.chain import build_chains
from plugins.providers import BuildContext
from plugins.resilience.store import DocumentStore
from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec
from tests.guard_fixtures import FakeClock, clock, store, synthesize

__all__ = ["clock", "store"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "openai-compatible-tts"
KEY = "sim-key-" + "c" * 12


# -- (a) in code ---------------------------------------------------------------------------


async def test_spec_with_a_factory_is_guarded_like_a_cloud_provider(
    store: DocumentStore, clock: FakeClock
) -> None:
    async with OpenAISimulator() as sim:

        def factory(spec: ProviderSpec, ctx: BuildContext) -> Any:
            return openai.TTS(base_url=sim.base_url, api_key=spec.api_key, response_format="pcm")

        spec = ProviderSpec("tts", "house-voice", api_key=KEY, factory=factory)
        chains = build_chains([spec], store, clock=clock, probes=False)
        try:
            assert chains.order["tts"] == ["tts:house-voice", "tts:free-tts"]
            assert "tts:house-voice" in chains.guards  # breaker, deadline, metering
            assert len(await synthesize(chains.tts, "Hello there.")) > 0
            assert [a.route for a in sim.state.log.items()].count("POST /v1/audio/speech") == 1
            sim.state.plan.always(Fault(FaultType.STATUS, status=500))
            assert len(await synthesize(chains.tts, "Still here.")) > 0  # the floor answered
            health = await store.health("tts:house-voice")
            assert health.failures >= 1
        finally:
            await chains.aclose()


async def test_spec_with_a_ready_plugin_and_a_factory_that_gives_nonsense(
    store: DocumentStore, clock: FakeClock
) -> None:
    ready = openai.TTS(base_url="http://127.0.0.1:9/v1", api_key=KEY)
    nonsense = ProviderSpec("llm", "broken", factory=lambda spec, ctx: "not a plugin")
    chains = build_chains(
        [ProviderSpec("tts", "ready-voice", factory=ready), nonsense],
        store,
        clock=clock,
        probes=False,
    )
    try:
        assert chains.order["tts"] == ["tts:ready-voice", "tts:free-tts"]
        assert chains.guards["tts:ready-voice"].inner is ready
        assert "not a LiveKit STT/LLM/TTS" in chains.skipped["llm:broken"]
        assert chains.order["llm"] == ["llm:free-llm"]
    finally:
        await chains.aclose()


# -- (b) discovery -------------------------------------------------------------------------


def _entry(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def test_discovery_adds_packages_and_leaves_broken_ones_out_with_a_reason() -> None:
    catalog = load_catalog(
        [
            _entry("good", "tests.custom_provider_fixture:PROVIDERS"),
            _entry("factory", "tests.custom_provider_fixture:make_providers"),
            _entry("missing", "no_such_package_anywhere:PROVIDERS"),
            _entry("clash", "tests.custom_provider_fixture:CLASH"),
            _entry("floor", "tests.custom_provider_fixture:FLOOR"),
        ]
    )
    assert "echo-llm" in catalog.known("llm")
    assert "echo-stt" in catalog.known("stt")
    assert catalog.default_order["llm"] == ("openrouter", "openai", "google", "free-llm")
    assert set(catalog.broken) == {"missing", "clash", "floor"}
    assert "ModuleNotFoundError" in catalog.broken["missing"]
    assert "already defined" in catalog.broken["clash"]
    assert "floor" in catalog.broken["floor"]
    assert catalog.floor("llm") == "free-llm"
    line = catalog.unknown("llm", "nope")
    assert "echo-llm" in line and "missing" in line and "\n" not in line


def test_a_plugin_declaring_a_builtin_setting_differently_is_refused() -> None:
    catalog = load_catalog([_entry("greedy", "tests.custom_provider_fixture:STEALS_A_SETTING")])
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        catalog.options()


# -- (b) an installed package --------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed with uv into a throwaway target directory."""
    uv = ROOT / ".tools" / "bin" / "uv"
    uv_cmd = str(uv) if uv.exists() else shutil.which("uv")
    assert uv_cmd, "uv is needed (make install puts it in .tools/bin)"
    target = tmp_path_factory.mktemp("site")
    build = ROOT / ".venv" / "bin" / "python"
    proc = subprocess.run(
        [uv_cmd, "pip", "install", "--python", str(build if build.exists() else sys.executable),
         "--target", str(target), "--no-deps", "--no-build-isolation", "--offline",
         "--cache-dir", str(target.parent / "uv-cache"), "--quiet", str(EXAMPLE)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (target / "never_silent_openai_tts" / "__init__.py").is_file()
    return target


def _env(target: Path, home: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{target}",
        **extra,
    }


async def _agent(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args,
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


@pytest.fixture
async def speech_server() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator() as sim:
        yield sim


async def test_installed_package_works_in_settings_doctor_and_status(
    installed: Path, tmp_path: Path, speech_server: OpenAISimulator
) -> None:
    env = _env(
        installed, tmp_path,
        TTS_PROVIDERS="openai-tts,local-tts,free-tts",
        OPENAI_TTS_API_KEY=KEY, OPENAI_TTS_BASE_URL=speech_server.base_url,
        DATA_DIR=str(tmp_path / "data"),
    )  # fmt: skip
    _, out = await _agent(["doctor"], env, tmp_path, 60)
    line = next(x for x in out.splitlines() if "tts:openai-tts" in x)
    assert line.startswith("ok "), out  # (doctor also judges LiveKit and the journal)
    assert "key accepted" in line and KEY not in out  # its credit check ran, key masked
    code, out = await _agent(["status"], env, tmp_path, 60)
    assert code == 0, out
    assert any(x.startswith("TTS   openai-tts") for x in out.splitlines()), out

    bad = {**env, "TTS_PROVIDERS": "openai-ttts,free-tts"}
    code, out = await _agent(["status"], bad, tmp_path, 60)
    assert code == 2
    assert out.strip().splitlines() == [
        "Invalid setting TTS_PROVIDERS: names unknown TTS provider 'openai-ttts'; "
        "choose from cartesia, local-tts, elevenlabs, free-tts, openai-tts"
    ]


async def test_a_call_is_spoken_by_the_installed_provider_first_in_the_chain(
    installed: Path, tmp_path: Path
) -> None:
    """``simulate`` aims the package's provider at its simulator like any built-in one."""
    # what is tested is that the package's voice is in and first, not its latency on a
    # loaded machine (its simulator synthesizes real speech in the same process)
    env = _env(
        installed, tmp_path, TTS_PROVIDERS="openai-tts,local-tts,free-tts",
        TTS_FIRST_AUDIO_TIMEOUT="10",
    )  # fmt: skip
    code, out = await _agent(
        ["simulate", "--scenario", "normal", "--json", "--speed", "2", "--turns", "2"],
        env,
        tmp_path,
        300,
    )
    report = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert report["chains"]["tts"][0] == "openai-tts", report["chains"]
    greeting, *caller = report["turns"]
    assert greeting["answered"] and greeting["providers"]["tts"] == "openai-tts", greeting
    answered = [t for t in caller if t["answered"]]
    # every reply is spoken by the package's provider; none fell through to the next voice
    # (a turn a loaded machine's recogniser misses is the STT chain's business, not this test's)
    assert len(caller) == 2 and answered, report["turns"]
    assert {t["providers"].get("tts") for t in answered} == {"openai-tts"}, report["turns"]
    assert not [s for s in report["switches"] if s["slot"] == "tts"], report["switches"]
    assert code != 2, out[-2000:]  # (1 or 3: a loaded machine's STT may miss or switch)


async def test_without_the_package_its_name_is_refused(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "TTS_PROVIDERS": "openai-tts,free-tts"}  # fmt: skip
    code, out = await _agent(["status"], env, tmp_path, 60)
    assert code == 2 and "names unknown TTS provider 'openai-tts'" in out
