"""The worker's share of the local speech models: which ones, with which options.

One definition for the worker, the production server and the benchmarks: which local models a
worker's chains use (and so what its shared speech service loads), and the Whisper options the
settings give.
"""

from __future__ import annotations

import dataclasses

from agent.sales_agent import COMPANY
from agent.settings import Settings
from plugins.catalog import CATALOG
from plugins.local.speech_supervisor import SpeechServiceSupervisor, socket_path_for
from plugins.local.whisper_stt import WhisperOptions
from plugins.providers.local import LOCAL_STT
from plugins.spec import ProviderSpec

#: What our callers talk about, for local-stt's vocabulary prompt (``LOCAL_STT_PROMPT`` unset):
#: the company, the topics its FAQ answers (agent/responder/faq.toml) and the lead details the
#: agent asks for. Whisper reads it as the conversation so far, so these words win close calls
#: on a noisy phone line. It names topics, not sentences, and no people: a name in the prompt
#: (the agent's, or "the caller") turns up in transcripts of speech Whisper cannot make out.
DOMAIN_PROMPT = (
    f"A phone call to {COMPANY} about pricing, plans, the free trial, a demo, integrations "
    "with a CRM and calendar, contracts and opening hours, to leave a name, phone number, "
    "email address and a time for a call back."
)


def with_domain_vocabulary(spec: ProviderSpec) -> ProviderSpec:
    """local-stt's spec with the domain prompt unless the settings give one (or 'off')."""
    if spec.name != LOCAL_STT.name or spec.extra.get("prompt"):
        return spec
    return dataclasses.replace(spec, extra={**spec.extra, "prompt": DOMAIN_PROMPT})


def providers_in_chains(settings: Settings) -> set[str]:
    """Every provider a call may use: the configured ones and the floors, always present."""
    configured = {*settings.stt_providers, *settings.tts_providers, *settings.llm_providers}
    return configured | set(CATALOG.floors.values())


def whisper_options(settings: Settings) -> WhisperOptions:
    """local-stt's options as the settings give them (LOCAL_STT_MODEL, _BEAM_SIZE, _THREADS,
    _PROMPT, which defaults to :data:`DOMAIN_PROMPT`)."""
    from plugins.local.whisper_stt import options_from

    spec = with_domain_vocabulary(LOCAL_STT.spec(settings.option))
    return options_from(spec.extra, spec.model)


def speech_service_for(settings: Settings) -> SpeechServiceSupervisor | None:
    """The worker's shared process for the local models its chains use (None: nothing to
    share, or ``LOCAL_SPEECH_SERVICE=false``, which makes each job process load its own)."""
    models = [
        slot
        for slot, name in (("stt", "local-stt"), ("tts", "local-tts"))
        if name in providers_in_chains(settings)
    ]
    if not settings.local_speech_service or not models:
        return None
    return SpeechServiceSupervisor(
        socket_path_for(settings.data_dir), models=models, whisper=whisper_options(settings)
    )
