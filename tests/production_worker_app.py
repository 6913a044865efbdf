"""A worker with the production server options whose calls run on a virtual phone line.

The dispatch server hosts no rooms, so a job of ``python -m agent start`` cannot hold a call.
This app is the same worker (``agent.drain.production_server``: load function, threshold,
drain timeout, journal flush; ``agent.worker.prewarm`` and ``build_session``), launched the same
way by LiveKit's CLI (``start``), except that each job's call is a
:class:`~plugins.sim.phone_line.PhoneLine` with a scripted caller instead of a room, journaled
by the real :class:`~agent.journal.recorder.CallRecorder`. Progress is written to
``DATA_DIR/calls/<job id>.log`` (one line per event) so a test can act mid-call.

Run: ``python tests/production_worker_app.py start`` with the worker's environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit.agents import JobContext

from agent.drain import DrainingServer, production_server
from agent.launch import run_worker_command
from agent.readiness import HealthEndpoint
from agent.settings import Settings, load_settings
from agent.worker import build_session, prewarm

CALLER_PHONE = "+15555550123"
CALLER_TURNS = (
    "Hi, I would like to know your pricing.",
    "Thanks, please send me the details.",
)


def progress(settings: Settings, job_id: str, event: str) -> None:
    path = Path(settings.data_dir) / "calls" / f"{job_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(event + "\n")
        f.flush()


async def phone_call(ctx: JobContext) -> None:
    from agent.journal.recorder import CallRecorder
    from agent.journal.store import JournalStore
    from agent.load import JobLoadReporter
    from agent.sales_agent import SalesAgent
    from plugins.sim.phone_line import PhoneLine

    settings: Settings = ctx.proc.userdata.get("settings") or load_settings()
    job_id = ctx.job.id
    session, chains = await build_session(settings, vad=ctx.proc.userdata["vad"], call_id=job_id)
    stop_load_report = JobLoadReporter(settings.data_dir, job_id).watch(chains.switches)
    store = JournalStore.in_dir(settings.data_dir, settings.secret("encryption_key"))
    recorder = CallRecorder(store, job_id, caller_phone=CALLER_PHONE)
    recorder.attach(session)
    try:
        async with PhoneLine(session, SalesAgent(greeting="Hi, this is Alex.")) as line:
            await line.listen()
            progress(settings, job_id, "greeted")
            for n, text in enumerate(CALLER_TURNS, start=1):
                turn = await line.say(text)
                progress(settings, job_id, f"turn {n} answered={turn.answered}")
        recorder.finish(reason="completed")
        progress(settings, job_id, "completed")
    finally:
        stop_load_report()
        await chains.aclose()
        store.close()
        ctx.shutdown(reason="call ended")


def phone_server(
    settings: Settings, *, health: HealthEndpoint | None, metrics: bool
) -> DrainingServer:
    server = production_server(settings, setup_fnc=prewarm, health=health, metrics=metrics)
    server.rtc_session(phone_call, agent_name=settings.agent_name)
    return server


def main() -> int:
    """Started like ``python -m agent start``: the same start-up checks and exit codes."""
    return run_worker_command("start", sys.argv[2:], load_settings(), phone_server)


if __name__ == "__main__":
    sys.exit(main())
