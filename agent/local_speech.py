"""The worker's share of the local speech models: which ones, with which options.

One definition for the worker, the production server and the benchmarks: which local models a
worker's chains use (and so what its shared speech service loads), and the Whisper options the
settings give.
"""

from __future__ import annotations

from agent.settings import Settings
from plugins.catalog import CATALOG
from plugins.local.speech_supervisor import SpeechServiceSupervisor, socket_path_for
from plugins.local.whisper_stt import WhisperOptions
from plugins.providers.local import LOCAL_STT


def providers_in_chains(settings: Settings) -> set[str]:
    """Every provider a call may use: the configured ones and the floors, always present."""
    configured = {*settings.stt_providers, *settings.tts_providers, *settings.llm_providers}
    return configured | set(CATALOG.floors.values())


def whisper_options(settings: Settings) -> WhisperOptions:
    """local-stt's options as the settings give them (LOCAL_STT_MODEL, _BEAM_SIZE, _THREADS)."""
    from plugins.local.whisper_stt import options_from

    extra = {name: settings.option(option) or "" for name, option in LOCAL_STT.options.items()}
    assert LOCAL_STT.model is not None
    return options_from(extra, settings.option(LOCAL_STT.model))


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
