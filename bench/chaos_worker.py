"""The chaos benchmark's worker: ``python -m agent start``'s server, with phone-line calls.

The dispatch simulator hosts no rooms (no LiveKit server can be installed here), so a job of
``python -m agent start`` cannot hold a call. This is the same worker, launched the same way by
LiveKit's CLI (``start``): :func:`agent.drain.production_server` (load function and threshold,
drain, journal delivery with crash recovery), :func:`agent.worker.prewarm` and
:func:`agent.worker.build_session`, and the call's CRM side from
:meth:`agent.call_crm.CallCrm.open` (journal, lead sink) exactly as ``entrypoint`` builds it.
Only the room is replaced: each job's caller is a :class:`~plugins.sim.phone_line.PhoneLine`
speaking ``CHAOS_TURNS`` lines, and the call saves a lead on the way, as a sales call does.
Each turn is appended to ``$CHAOS_EVENTS_DIR/<job id>.jsonl`` for the benchmark to count.

Run: ``python -m bench.chaos_worker start`` with the worker's environment.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from functools import cache
from pathlib import Path
from typing import Any

from livekit.agents import JobContext

from agent.drain import DrainingServer, production_server
from agent.launch import run_worker_command
from agent.readiness import HealthEndpoint
from agent.settings import Settings, load_settings
from agent.worker import build_session, prewarm
from plugins.sim import phone_line  # noqa: F401 - imported before a call, not during one

CALLER_LINES = (
    "Hi, I would like to know your pricing.",
    "What does the pro plan include?",
    "Can someone call me back on Friday?",
    "Great, thank you very much.",
)


@cache
def _voice(text: str) -> tuple[Any, int]:
    from plugins.sim.phone_line import hibari_voice

    return hibari_voice(text)


def _event(settings: Settings, job_id: str, **fields: Any) -> None:
    path = Path(os.environ.get("CHAOS_EVENTS_DIR") or settings.data_dir) / f"{job_id}.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"at": time.time(), "pid": os.getpid(), **fields}) + "\n")
    except OSError:  # the disk-full fault: the benchmark's own notes are not the product
        pass


async def chaos_call(ctx: JobContext) -> None:
    from agent.call_crm import CallCrm
    from agent.load import JobLoadReporter
    from agent.responder.lead import Lead
    from agent.sales_agent import GREETING, SalesAgent
    from plugins.sim.phone_line import PhoneLine, PhoneLineTimeoutError

    settings: Settings = ctx.proc.userdata.get("settings") or load_settings()
    job_id = ctx.job.id
    turns = int(os.environ.get("CHAOS_TURNS", "4"))
    phone = "+1415555" + f"{zlib.crc32(job_id.encode()) % 10000:04d}"
    runtime: Any = None
    crm = CallCrm.open(
        settings,
        job_id,
        caller_phone=phone,
        usage_summary=lambda: runtime.usage.summary() if runtime else None,
    )
    session, runtime = await build_session(
        settings,
        vad=ctx.proc.userdata["vad"],
        call_id=job_id,
        lead_sink=crm.lead_sink if crm else None,
    )
    stop_load_report = JobLoadReporter(settings.data_dir, job_id).watch(runtime.switches)
    if crm is not None:
        crm.recorder.attach(session)
        runtime.on_switch(crm.on_switch)
    _event(settings, job_id, event="start", phone=phone)
    try:
        async with PhoneLine(
            session, SalesAgent(greeting=GREETING), voice=_voice, reply_timeout=15.0
        ) as line:
            greeting = await line.listen()
            _event(settings, job_id, event="turn", turn=0, **_turn(greeting))
            for n in range(1, turns + 1):
                try:
                    turn = await line.say(CALLER_LINES[(n - 1) % len(CALLER_LINES)])
                except PhoneLineTimeoutError as e:
                    _event(settings, job_id, event="turn", turn=n, answered=False, error=str(e))
                    continue
                _event(settings, job_id, event="turn", turn=n, **_turn(turn))
                if n == 2 and crm is not None:
                    await crm.lead_sink.save_lead(
                        Lead(name="Chaos Caller", phone=phone, notes=["Asked about the pro plan"])
                    )
    finally:
        stop_load_report()
        if crm is not None:
            crm.recorder.finish(usage_summary=runtime.usage.summary())
            await crm.aclose()
        await runtime.aclose()
        _event(settings, job_id, event="end")
        ctx.shutdown(reason="call ended")


def _turn(turn: Any) -> dict[str, Any]:
    return {
        "answered": bool(turn.answered),
        "latency_s": turn.latency_s,
        "longest_silence_s": turn.longest_silence_s if turn.answered else None,
        "gaps": [g for g in turn.playout_gaps_s if g > 2.0],
        "error": turn.error,
    }


def chaos_server(
    settings: Settings, *, health: HealthEndpoint | None, metrics: bool
) -> DrainingServer:
    # The benchmark shares 2 cores with everything else: give each job process time to prewarm.
    server = production_server(
        settings,
        setup_fnc=prewarm,
        health=health,
        metrics=metrics,
        extra_options={
            "initialize_process_timeout": 120.0,
            "num_idle_processes": int(os.environ.get("CHAOS_IDLE_PROCESSES", "2")),
        },
    )
    server.rtc_session(chaos_call, agent_name=settings.agent_name)
    return server


def main() -> int:
    """Started like ``python -m agent start``: the same start-up checks and exit codes."""
    return run_worker_command("start", sys.argv[2:], load_settings(), chaos_server)


if __name__ == "__main__":
    raise SystemExit(main())
