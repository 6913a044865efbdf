"""How a simulated call reads: live lines while it runs, a summary and a JSON document after.

This is CLI output (the ``simulate`` command's user interface), written to a text stream.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, TextIO

from agent.simulate.runner import CallReport, TurnRecord
from agent.simulate.scenarios import SCENARIOS, FaultStep
from plugins.observability.health_view import render_table
from plugins.observability.switches import SwitchEvent


def list_scenarios(out: TextIO) -> None:
    width = max(len(name) for name in SCENARIOS)
    for scenario in SCENARIOS.values():
        out.write(f"{scenario.name.ljust(width)}  {scenario.summary}\n")


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LiveWriter:
    """Prints the call as it happens (a :class:`~agent.simulate.runner.Listener`)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def _line(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def on_start(self, report: CallReport) -> None:
        scenario = report.scenario
        self._line(f"scenario {scenario.name}: {scenario.summary}")
        for slot, names in report.chains.items():
            self._line(f"  {slot.upper()} chain: {' > '.join(names)}")
        for key, why in report.skipped.items():
            self._line(f"  skipped {key}: {why}")
        self._line("")

    def on_fault(self, at_s: float, step: FaultStep) -> None:
        self._line(f"[{at_s:6.2f}s] FAULT   {step.describe()}")

    def on_switch(self, switch: SwitchEvent) -> None:
        arrow = f"{switch.from_provider or '-'} -> {switch.to_provider}"
        self._line(f"[{switch.at_s:6.2f}s] SWITCH  {switch.slot.upper()} {arrow} ({switch.reason})")

    def on_caller(self, at_s: float, text: str) -> None:
        self._line(f"[{at_s:6.2f}s] CALLER  {text}")

    def on_turn(self, turn: TurnRecord) -> None:
        if turn.index > 0:
            self._line(f"{'':10}heard   {turn.heard or '(nothing)'}")
        used = ", ".join(f"{slot} {name}" for slot, name in turn.providers.items())
        latency = f"latency {turn.latency_s:.2f} s, " if turn.latency_s is not None else ""
        if turn.answered:
            self._line(f"{'':10}AGENT   {_clip(turn.text) or '(no text)'}")
            gaps = f", gaps {turn.playout_gaps_s}" if turn.playout_gaps_s else ""
            self._line(f"{'':10}        ({latency}{turn.duration_s:.1f} s of speech; {used}{gaps})")
        else:
            why = turn.error or "no audible speech"
            self._line(f"{'':10}AGENT   (NO SPOKEN ANSWER: {why})")


def write_summary(report: CallReport, out: TextIO) -> None:
    caller = report.caller_turns
    answered = sum(1 for t in caller if t.answered)
    out.write("\nprovider health at the end of the call:\n")
    out.write(render_table(report.health) + "\n\n")
    for description, ok in report.checks:
        out.write(f"  [{'ok' if ok else 'FAILED'}] {description}\n")
    for path in report.audio_files:
        out.write(f"  wrote {path}\n")
    out.write(
        f"\n{answered}/{len(report.scenario.caller)} caller turns answered, "
        f"{len(report.switches)} switch(es), {report.wall_s:.1f} s; exit {report.exit_code}\n"
    )


def as_json(report: CallReport) -> str:
    doc: dict[str, Any] = {
        "scenario": report.scenario.name,
        "summary": report.scenario.summary,
        "exit_code": report.exit_code,
        "wall_s": report.wall_s,
        "chains": report.chains,
        "skipped": report.skipped,
        "faults": [step.describe() for step in report.scenario.faults],
        "turns": [asdict(t) for t in report.turns],
        "switches": [asdict(s) for s in report.switches],
        "health": [row.as_dict() for row in report.health],
        "checks": [{"check": d, "ok": ok} for d, ok in report.checks],
        "audio_files": report.audio_files,
    }
    return json.dumps(doc, indent=2)
