"""``python -m agent simulate``: whole calls against the provider simulators, with faults.

Each run is a real call: the real LiveKit plugins against in-process simulators, the session
built by the worker's own code, synthesized caller speech on a virtual phone line. Runs use a
three-turn call at 4x speed to keep the file short; the CLI default is the full call in real
time.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from agent import simulate
from agent.settings import Settings
from agent.simulate.report import LiveWriter, as_json, write_summary
from agent.simulate.runner import CallReport, run_scenario
from agent.simulate.scenarios import (
    DEFAULT_CALLER,
    SCENARIOS,
    SIM_PROVIDERS,
    SIMULATORS,
    get_scenario,
)
from plugins.catalog import CATALOG
from plugins.sim.phone_line import speech_seconds

SHORT_CALL = DEFAULT_CALLER[:3]


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


async def run(name: str, settings: Settings, **kwargs: object) -> CallReport:
    scenario = dataclasses.replace(get_scenario(name), caller=SHORT_CALL)
    out = io.StringIO()
    started = time.monotonic()
    report = await run_scenario(scenario, settings, listener=LiveWriter(out), speed=4.0, **kwargs)  # type: ignore[arg-type]
    write_summary(report, out)
    print(f"\n--- {name}: {time.monotonic() - started:.1f} s wall ---\n{out.getvalue()}")
    return report


def assert_every_turn_answered(report: CallReport) -> None:
    assert len(report.caller_turns) == len(report.scenario.caller)
    for turn in report.turns:
        assert turn.answered, f"turn {turn.index} ({turn.said!r}) unanswered: {turn.error}"
        assert turn.text


def health_state(report: CallReport, key: str) -> str:
    slot, _, provider = key.partition(":")
    return next(r.state for r in report.health if (r.slot, r.provider) == (slot, provider))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def all_paid_fail() -> CallReport:
    """One all-paid-fail call, inspected by the tests below."""
    return await run("all-paid-fail", Settings(_env_file=None))  # type: ignore[call-arg]


@pytest.mark.slow
def test_all_paid_fail_moves_every_slot_to_the_free_providers(
    all_paid_fail: CallReport,
) -> None:
    report = all_paid_fail
    for slot in ("stt", "llm", "tts"):
        primary = CATALOG.default_order[slot][0]
        assert any(s.slot == slot and s.from_provider == primary for s in report.switches)
    for turn in report.caller_turns:
        assert set(turn.providers) == {"stt", "llm", "tts"}, turn.providers
        assert set(turn.providers.values()) <= CATALOG.local_names, turn.providers
    assert report.turns[0].answered  # the greeting, on a local voice
    assert health_state(report, "tts:cartesia").startswith("quota-exhausted")
    assert health_state(report, "llm:openrouter") != "available"
    assert all(ok for _, ok in report.checks), report.checks


@pytest.mark.slow
def test_all_paid_fail_answers_every_caller_turn(all_paid_fail: CallReport) -> None:
    """The caller's first words reach the free recogniser even though Whisper fails on them."""
    assert_every_turn_answered(all_paid_fail)
    assert all_paid_fail.exit_code == 0, all_paid_fail.checks


@pytest.fixture
def health_log_shown() -> Iterator[io.StringIO]:
    """The health log printed to stdout, as ``simulate`` does."""
    import structlog

    from agent.logs import configure_structlog

    before_config = structlog.get_config()
    configure_structlog()  # as the CLI does: structlog events through stdlib logging
    # but cache no logger: later tests capture logs with structlog.testing
    structlog.configure(cache_logger_on_first_use=False)
    health = logging.getLogger("health")
    before = list(health.handlers)
    out = io.StringIO()
    simulate.show_health_log(out, verbose=False)
    yield out
    health.handlers = before
    health.propagate = True
    structlog.configure(**before_config)


@pytest.mark.slow
async def test_tts_quota_exceeded_moves_off_cartesia(
    settings: Settings, tmp_path: Path, health_log_shown: io.StringIO
) -> None:
    report = await run("tts-quota-exceeded", settings, save_audio=tmp_path)

    # the seed's lines, as the seed wrote them
    lines = health_log_shown.getvalue().splitlines()
    seed = [
        "🔧 Provider Manager initialized:",
        "  TTS: cartesia → local-tts → elevenlabs → free-tts",
        "🔊 Using TTS provider: cartesia",
        "🎤 Using STT provider: deepgram",
        "🧠 Using LLM provider: openrouter",
        "❌ TTS provider cartesia failed: 402 Payment Required",
        "🔄 Falling back to TTS provider: local-tts",
        "🔊 Using TTS provider: local-tts",
        "📊 Provider Health Status:",
        "  TTS: cartesia (failed) → local-tts (active) → elevenlabs (available) → free-tts (available)",
    ]
    at = [lines.index(line) for line in seed]  # each is there...
    assert at == sorted(at)  # ...in the seed's order
    assert lines[at[0] + 2].startswith("  STT: deepgram → ")
    assert lines[at[0] + 3] == "  LLM: openrouter → openai → google → free-llm"

    assert report.exit_code == 0, report.checks
    assert_every_turn_answered(report)
    moves = [s for s in report.switches if s.slot == "tts"]
    assert moves and moves[0].from_provider == "cartesia"
    assert "quota" in moves[0].reason
    assert all(t.providers.get("tts") not in (None, "cartesia") for t in report.turns)
    assert health_state(report, "tts:cartesia").startswith("quota-exhausted")
    # Cartesia is never tried again during the call: its quota error keeps it off
    assert not any(s.slot == "tts" and s.to_provider == "cartesia" for s in report.switches)

    # --save-audio: the agent's side of the call, audible, as WAV
    with wave.open(str(tmp_path / "agent.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        rate = w.getframerate()
    assert speech_seconds(pcm, rate) > 5.0
    assert (tmp_path / "caller.wav").is_file()
    with wave.open(str(tmp_path / "call.wav")) as w:
        assert w.getnchannels() == 2 and w.getframerate() == rate


@pytest.mark.slow
async def test_normal_call_stays_on_the_primaries(settings: Settings) -> None:
    report = await run("normal", settings)

    assert report.exit_code == 0, report.checks
    assert_every_turn_answered(report)
    assert report.switches == []
    for turn in report.caller_turns:
        assert turn.providers == {"stt": "deepgram", "llm": "openrouter", "tts": "cartesia"}
    assert "pricing" in report.turns[1].heard.lower()
    assert '"exit_code": 0' in as_json(report)


def test_list_names_every_scenario(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate.run(["--list"], settings) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(SCENARIOS)
    for name in ("normal", "tts-quota-exceeded", "stt-api-error", "llm-rate-limit",
                 "all-paid-fail", "provider-hang", "mid-stream-cut", "flapping"):  # fmt: skip
        assert name in SCENARIOS


def test_bad_arguments_are_refused_clearly(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulate.run(["--scenario", "no-such-thing"], settings) == 2
    assert "unknown scenario 'no-such-thing'" in capsys.readouterr().err
    assert simulate.run([], settings) == 2
    assert "--scenario" in capsys.readouterr().err
    assert simulate.run(["--scenario", "normal", "--speed", "50"], settings) == 2
    capsys.readouterr()
    assert simulate.run(["--scenario", "normal", "--turns", "9"], settings) == 2
    assert "--turns must be between 1 and 5" in capsys.readouterr().err


def test_scenarios_are_consistent_data() -> None:
    for scenario in SCENARIOS.values():
        assert 3 <= len(scenario.caller) <= 5
        for step in scenario.faults:
            assert step.sim in SIMULATORS
            assert step.describe().startswith(step.sim)
        faulty = {p for step in scenario.faults for p in SIM_PROVIDERS[step.sim]}
        for expected in scenario.expect:
            # an expected move off a provider names a provider the scenario breaks
            if expected.from_provider is not None:
                assert (expected.slot, expected.from_provider) in faulty, (scenario.name, expected)
