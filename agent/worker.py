"""The LiveKit worker: one ``AgentServer``, a prewarm per job process and a session per call.

LiveKit runs each call in its own process. Prewarm loads what is slow to load (Silero VAD, the
local speech models) once per process, before a call arrives, so a call that falls back to a
local provider never waits for a model to load.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from livekit.agents import AgentServer, AgentSession, JobContext, JobProcess

from agent.logs import configure_logging
from agent.settings import Settings, load_settings

log = structlog.get_logger(__name__)


def prewarm(proc: JobProcess) -> None:
    settings = load_settings()
    configure_logging(
        fmt=settings.log_format,
        level=settings.log_level,
        production=os.environ.get("LIVEKIT_DEV_MODE") != "1",
    )
    from livekit.plugins import silero

    from plugins.local.prewarm import prewarm_local_providers

    proc.userdata["vad"] = silero.VAD.load()
    prewarm_local_providers(settings_slots(settings))
    proc.userdata["settings"] = settings


def settings_slots(settings: Settings) -> set[str]:
    """Local providers configured in any chain (the free floor ones always are)."""
    return {*settings.stt_providers, *settings.tts_providers, *settings.llm_providers} | {
        "free-stt",
        "free-tts",
        "free-llm",
    }


async def build_session(settings: Settings, *, vad: Any, call_id: str) -> tuple[AgentSession, Any]:
    """The call's ``AgentSession`` over guarded provider chains, and the chains themselves."""
    from plugins.chain import build_chains
    from plugins.resilience.store import open_store

    store = await open_store(settings.redis_url, settings.data_dir)
    chains = build_chains(
        [*settings.provider_specs("stt"), *settings.provider_specs("llm")]
        + settings.provider_specs("tts"),
        store,
        vad=vad,
    )
    session: AgentSession = AgentSession(
        stt=chains.stt, llm=chains.llm, tts=chains.tts, vad=vad, userdata={"call_id": call_id}
    )
    return session, chains


def create_server(settings: Settings) -> AgentServer:
    server = AgentServer(setup_fnc=prewarm, prometheus_port=settings.metrics_port)

    @server.rtc_session(agent_name=settings.agent_name)
    async def entrypoint(ctx: JobContext) -> None:
        from agent.sales_agent import SalesAgent

        cfg: Settings = ctx.proc.userdata.get("settings") or load_settings()
        ctx.log_context_fields = {"room": ctx.room.name, "job_id": ctx.job.id}
        session, _chains = await build_session(
            cfg, vad=ctx.proc.userdata["vad"], call_id=ctx.job.id
        )
        await session.start(
            agent=SalesAgent(
                greeting="Hi, this is Alex from Acme Growth. How can I help you today?"
            ),
            room=ctx.room,
        )
        await ctx.connect()

    return server
