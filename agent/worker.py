"""The LiveKit worker: one ``AgentServer``, a prewarm per job process and a session per call.

LiveKit runs each call in its own process. Prewarm loads what is slow to load (Silero VAD, the
local speech models) once per process, before a call arrives, so a call that falls back to a
local provider never waits for a model to load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from livekit.agents import (
    AgentSession,
    JobContext,
    JobProcess,
    Plugin,
    TurnHandlingOptions,
    inference,
)
from livekit.plugins import silero

from agent.call import CallRuntime, build_call_runtime
from agent.drain import DrainingServer, production_server
from agent.local_speech import providers_in_chains, whisper_options
from agent.logs import configure_structlog
from agent.readiness import HealthEndpoint
from agent.responder.lead import LeadSink
from agent.settings import Settings, load_settings
from plugins.catalog import import_plugins
from plugins.resilience.types import GuardObserver

# LiveKit plugins register themselves on import and refuse to do so off the main thread (the
# console runs jobs in a thread): every plugin a provider definition names is imported here.
import_plugins()

log = structlog.get_logger(__name__)


def prewarm(proc: JobProcess) -> None:
    settings = load_settings()
    configure_structlog()  # LiveKit forwards this process's records to the worker's handler
    from plugins.local.prewarm import prewarm_local_providers

    proc.userdata["vad"] = silero.VAD.load()
    # with the worker's shared speech service this loads only eSpeak (the TTS floor)
    prewarm_local_providers(providers_in_chains(settings), whisper=whisper_options(settings))
    # What a call imports on its first turn would block that call's loop (e-mail validation
    # for leads, the journal, the CRM tools): import it now, before a caller is waiting.
    import agent.call_crm
    import agent.crm.leads
    import agent.crm.tools
    import agent.journal.recorder
    import agent.sales_agent  # noqa: F401

    proc.userdata["settings"] = settings


async def build_session(
    settings: Settings,
    *,
    vad: Any,
    call_id: str,
    lead_sink: LeadSink | None = None,
    observers: Sequence[GuardObserver] = (),
) -> tuple[AgentSession[Any], CallRuntime]:
    """The call's ``AgentSession`` over guarded provider chains, and what watches them.

    The same function builds calls for the worker, ``simulate`` and the benchmarks, so each of
    them exercises the production wiring. ``await runtime.aclose()`` when the call ends.
    """
    runtime = build_call_runtime(
        settings, vad=vad, call_id=call_id, lead_sink=lead_sink, observers=observers
    )
    session: AgentSession[Any] = AgentSession(
        stt=runtime.stt,
        llm=runtime.llm,
        tts=runtime.tts,
        vad=vad,
        userdata={"call_id": call_id},
        turn_handling=turn_handling(settings),
    )
    return session, runtime


def turn_handling(settings: Settings) -> TurnHandlingOptions:
    """LiveKit's own turn handling, kept local when LiveKit's inference service is out of reach.

    In ``dev`` and ``console`` LiveKit picks its cloud end-of-turn model and adaptive
    interruption detector, which need the LiveKit key and secret; without them it warns
    about settings the user never set and falls back anyway. With no LiveKit credentials the
    session asks for what that fallback would give (the local end-of-turn model, interruption by
    voice activity) in the first place.
    """
    if settings.secret("livekit_api_key") and settings.secret("livekit_api_secret"):
        return {}
    return {
        "turn_detection": inference.TurnDetector(version="v1-mini"),
        "interruption": {"mode": "vad"},
    }


# -- begin: production server (issue 7, production helper) ----------------------------------
# The entrypoint is a module-level function: in `start` mode LiveKit pickles it into its
# forkserver job processes, and a function nested in create_server() cannot be pickled (every
# job process then failed to start). create_server() takes its options (load function and
# threshold, drain timeout, health port, journal flush on shutdown) from agent/drain.py.
async def entrypoint(ctx: JobContext) -> None:
    from agent.call_crm import CallCrm
    from agent.console_view import show_greeting_in_text_console
    from agent.load import JobLoadReporter
    from agent.sales_agent import GREETING, SalesAgent

    cfg: Settings = ctx.proc.userdata.get("settings") or load_settings()
    call_id = ctx.job.id
    ctx.log_context_fields = {"room": ctx.room.name, "job_id": call_id}
    runtime: CallRuntime | None = None
    crm = CallCrm.open(
        cfg, call_id, usage_summary=lambda: runtime.usage.summary() if runtime else None
    )
    session, runtime = await build_session(
        cfg,
        vad=ctx.proc.userdata["vad"],
        call_id=call_id,
        lead_sink=crm.lead_sink if crm else None,
    )
    stop_load_report = JobLoadReporter(cfg.data_dir, call_id).watch(runtime.switches)
    if crm is not None:
        crm.recorder.attach(session)  # every item appended (and fsync'd) as it happens
        runtime.on_switch(crm.on_switch)

    async def _end_call() -> None:
        stop_load_report()
        assert runtime is not None
        if crm is not None:
            crm.recorder.finish(usage_summary=runtime.usage.summary())
            await crm.aclose()
        await runtime.aclose()

    ctx.add_shutdown_callback(_end_call)
    show_greeting_in_text_console(session)
    await session.start(
        agent=SalesAgent(
            greeting=GREETING,
            tools=[crm.tools] if crm is not None and crm.tools is not None else [],
        ),
        room=ctx.room,
    )
    await ctx.connect()
    if crm is not None and crm.tools is not None:
        # A phone caller (SIP) is looked up while the greeting plays.
        participant = await ctx.wait_for_participant()
        phone = participant.attributes.get("sip.phoneNumber")
        if phone:
            crm.tools.start_caller_lookup(phone)


def create_server(
    settings: Settings, *, health: HealthEndpoint | None = None, metrics: bool = True
) -> DrainingServer:
    from plugins.local.downloads import LocalSpeechFiles

    if not any(isinstance(p, LocalSpeechFiles) for p in Plugin.registered_plugins):
        Plugin.register_plugin(LocalSpeechFiles(whisper_options(settings).model))  # download-files
    server = production_server(settings, setup_fnc=prewarm, health=health, metrics=metrics)
    server.rtc_session(entrypoint, agent_name=settings.agent_name)
    return server


# -- end: production server ------------------------------------------------------------------
