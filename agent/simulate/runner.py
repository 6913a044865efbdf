"""Run one scenario: a whole sales call against in-process provider simulators.

Every cloud provider is its real LiveKit plugin pointed at a simulator (fake ``sim-key`` keys),
the session is built by the worker's own :func:`agent.worker.build_session`, the caller's turns
are synthesized speech fed through a :class:`~plugins.sim.phone_line.PhoneLine`, and the
scenario's faults are injected into the simulators' plans. Nothing needs a key, a network or a
LiveKit server. What happens is reported to ``listener`` as it happens and summed up in a
:class:`CallReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog

from agent.sales_agent import GREETING
from agent.settings import Settings
from agent.simulate.scenarios import SIM_PROVIDERS, SIMULATORS, FaultStep, Scenario, SimName
from agent.simulate.simulators import Simulator, apply_fault, make_simulator, sim_settings
from plugins.catalog import CATALOG
from plugins.local.audio import resample
from plugins.observability.health_view import HealthRow, health_row
from plugins.observability.switches import SwitchEvent, SwitchTracker
from plugins.sim.phone_line import AgentTurn, PhoneLine, PhoneLineTimeoutError

log = structlog.get_logger(__name__)


@dataclass
class TurnRecord:
    index: int  # 0 is the greeting
    at_s: float  # when the caller started speaking (the greeting: when the call opened)
    said: str
    heard: str
    text: str
    latency_s: float | None
    duration_s: float
    answered: bool
    providers: dict[str, str]  # slot -> provider that served this turn
    playout_gaps_s: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class CallReport:
    scenario: Scenario
    turns: list[TurnRecord] = field(default_factory=list)
    switches: list[SwitchEvent] = field(default_factory=list)
    health: list[HealthRow] = field(default_factory=list)
    chains: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    checks: list[tuple[str, bool]] = field(default_factory=list)
    wall_s: float = 0.0
    audio_files: list[str] = field(default_factory=list)

    @property
    def caller_turns(self) -> list[TurnRecord]:
        return [t for t in self.turns if t.index > 0]

    @property
    def unanswered(self) -> list[TurnRecord]:
        return [t for t in self.turns if not t.answered]

    @property
    def exit_code(self) -> int:
        """0: every turn answered and every expectation met; 1: a turn got no spoken
        answer; 3: all answered but an expected switch or recovery did not happen."""
        if self.unanswered or len(self.caller_turns) < len(self.scenario.caller):
            return 1
        if not all(ok for _, ok in self.checks):
            return 3
        return 0


class Listener(Protocol):
    """Told about the call as it happens (the CLI prints; tests may record)."""

    def on_start(self, report: CallReport) -> None: ...

    def on_switch(self, switch: SwitchEvent) -> None: ...

    def on_turn(self, turn: TurnRecord) -> None: ...

    def on_fault(self, at_s: float, step: FaultStep) -> None: ...

    def on_caller(self, at_s: float, text: str) -> None: ...


class SilentListener:
    def on_start(self, report: CallReport) -> None:
        return None

    def on_switch(self, switch: SwitchEvent) -> None:
        return None

    def on_turn(self, turn: TurnRecord) -> None:
        return None

    def on_fault(self, at_s: float, step: FaultStep) -> None:
        return None

    def on_caller(self, at_s: float, text: str) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# the call
# ---------------------------------------------------------------------------------------------


async def _load_models() -> Any:
    """The VAD and the local voices/recogniser, loaded off the event loop."""

    from livekit.plugins import silero  # plugins register themselves on the main thread

    def load() -> Any:
        from plugins.local.prewarm import prewarm_local_providers

        prewarm_local_providers(["local-stt", "local-tts", "free-tts", "free-stt"])
        return silero.VAD.load()

    return await asyncio.to_thread(load)


async def run_scenario(
    scenario: Scenario,
    base: Settings,
    *,
    listener: Listener | None = None,
    speed: float = 1.0,
    save_audio: Path | None = None,
    reply_timeout: float = 20.0,
) -> CallReport:
    """Run ``scenario`` as one whole call and report what the caller experienced."""
    from agent.sales_agent import SalesAgent
    from agent.worker import build_session

    out: Listener = listener or SilentListener()
    report = CallReport(scenario)
    vad = await _load_models()
    wall_started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        sims: dict[SimName, Simulator] = {}
        missing: dict[SimName, str] = {}
        for name in SIMULATORS:
            try:
                sim = make_simulator(name)
            except ImportError as e:  # a simulator this build does not have
                missing[name] = f"no simulator available ({e})"
                continue
            await sim.start()
            stack.push_async_callback(sim.aclose)
            sims[name] = sim
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="simulate-")))
        settings = sim_settings(base, {n: s.base_url for n, s in sims.items()}, data_dir)

        def inject(before_turn: int, started_at: float) -> None:
            for step in scenario.faults:
                if step.before_turn == before_turn:
                    apply_fault(sims[step.sim].state, step)
                    out.on_fault(round(time.time() - started_at, 2), step)

        call_started = time.time()
        session, chains = await build_session(
            settings, vad=vad, call_id=f"simulate-{scenario.name}"
        )
        stack.push_async_callback(chains.aclose)
        report.chains = {
            slot: [k.partition(":")[2] for k in keys] for slot, keys in chains.order.items()
        }
        report.skipped = dict(chains.skipped)
        for missing_name, why in missing.items():
            for slot, provider in SIM_PROVIDERS[missing_name]:
                report.skipped[f"{slot}:{provider}"] = why
        watcher = chains.switches  # the call's own tracker: what the health log sees too
        watcher.subscribe(out.on_switch)
        report.switches = watcher.switches
        out.on_start(report)
        inject(0, call_started)

        line = PhoneLine(
            session,
            SalesAgent(greeting=GREETING),
            speed=speed,
            reply_timeout=reply_timeout,
        )
        async with line:
            greeting = await _turn(line.listen())
            _record(report, watcher, greeting, call_started, call_started, out)
            for index, text in enumerate(scenario.caller, start=1):
                inject(index, call_started)
                turn_started = time.time()
                out.on_caller(round(turn_started - call_started, 2), text)
                turn = await _turn(line.say(text))
                _record(report, watcher, turn, call_started, turn_started, out)
            if save_audio is not None:
                report.audio_files = _save_audio(save_audio, line)
        _settle_providers(report, watcher, call_started)
        report.health = await _health(settings)

    report.checks = check_expectations(report)
    report.wall_s = round(time.monotonic() - wall_started, 1)
    return report


async def _turn(waiting: Any) -> AgentTurn:
    try:
        turn: AgentTurn = await waiting
    except PhoneLineTimeoutError as e:
        if e.turn is None:
            raise
        return e.turn
    return turn


def _record(
    report: CallReport,
    watcher: SwitchTracker,
    turn: AgentTurn,
    call_started: float,
    turn_started: float,
    out: Listener,
) -> None:
    served = watcher.served_between(turn_started, time.time())
    if turn.index == 0:  # the greeting is said, not heard or generated
        served = {slot: name for slot, name in served.items() if slot == "tts"}
    record = TurnRecord(
        index=turn.index,
        at_s=round(turn_started - call_started, 2),
        said=turn.said,
        heard=turn.heard,
        text=turn.text,
        latency_s=None if turn.latency_s is None else round(turn.latency_s, 3),
        duration_s=round(turn.duration_s, 2),
        answered=turn.answered,
        providers=served,
        playout_gaps_s=turn.playout_gaps_s,
        error=turn.error,
    )
    report.turns.append(record)
    out.on_turn(record)


def _settle_providers(report: CallReport, watcher: SwitchTracker, call_started: float) -> None:
    """Who served each turn, once every late report is in.

    A guard may record a success a moment after the caller heard the answer, so the live
    lines can miss it; the final report gives each turn everything served until the next.
    """
    starts = [call_started + t.at_s for t in report.turns] + [time.time() + 1.0]
    for turn, start, end in zip(report.turns, starts, starts[1:], strict=False):
        served = watcher.served_between(start, end)
        if turn.index == 0:
            served = {slot: name for slot, name in served.items() if slot == "tts"}
        turn.providers = served


async def _health(settings: Settings) -> list[HealthRow]:
    from plugins.resilience.store import open_store

    store = open_store(settings.redis_url, settings.data_dir)
    try:
        return [health_row(h) for h in await store.all_health()]
    finally:
        await store.aclose()


def check_expectations(report: CallReport) -> list[tuple[str, bool]]:
    """Each expectation of the scenario, described, with whether the call met it."""
    scenario = report.scenario
    checks: list[tuple[str, bool]] = []
    for expected in scenario.expect:
        met = any(expected.matches(s.slot, s.from_provider, s.to_provider) for s in report.switches)
        checks.append((f"switch {expected.describe()}", met))
    last = report.caller_turns[-1] if report.caller_turns else None
    for slot in scenario.local_only:
        used = {t.providers.get(slot) for t in report.caller_turns if t.answered} - {None}
        checks.append(
            (
                f"{slot.upper()} answered by local providers only ({', '.join(sorted(used)) or '-'})",  # type: ignore[arg-type]
                bool(used) and used <= CATALOG.local_names,
            )
        )
    for slot in scenario.back_on_primary:
        primary = report.chains.get(slot, [None])[0]
        now = last.providers.get(slot) if last else None
        checks.append((f"{slot.upper()} back on {primary} by the end (on {now})", now == primary))
    if not scenario.expect and not scenario.local_only:
        checks.append(("no provider switch", not report.switches))
    # a reply cut off mid-sentence must not be presented to the caller as if it were whole
    cut = [t.index for t in report.turns if t.answered and not _complete(t.text)]
    checks.append((f"every reply ends as a whole sentence (cut: {cut or 'none'})", not cut))
    return checks


def _complete(text: str) -> bool:
    return text.rstrip().endswith((".", "?", "!", '"'))


def _save_audio(directory: Path, line: PhoneLine) -> list[str]:
    import wave

    directory.mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    def write(name: str, pcm: Any, rate: int, channels: int = 1) -> None:
        path = directory / name
        with wave.open(str(path), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm.tobytes())
        files.append(str(path))

    agent, rate = line.agent_track(), line.earpiece.rate
    write("agent.wav", agent, rate)
    caller, caller_rate = line.caller_track()
    write("caller.wav", caller, caller_rate)
    # both sides in one file, as a call recording: caller left, agent right
    caller = resample(caller, caller_rate, rate)
    both = np.zeros((max(agent.size, caller.size), 2), dtype=np.int16)
    both[: caller.size, 0] = caller
    both[: agent.size, 1] = agent
    write("call.wav", both, rate, channels=2)
    for turn in line.turns:
        write(f"agent-turn-{turn.index:02d}.wav", turn.audio, turn.sample_rate)
    return files


__all__ = [
    "GREETING",
    "CallReport",
    "Listener",
    "SilentListener",
    "SwitchEvent",
    "SwitchTracker",
    "TurnRecord",
    "check_expectations",
    "run_scenario",
]
