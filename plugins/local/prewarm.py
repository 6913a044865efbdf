"""Load the local models a process will need, once, before the first call needs them.

Inside a worker that runs the shared local speech service, a job process loads none of the
service's models (Whisper, hibari) and not PocketSphinx either: PocketSphinx is then only the
floor for when the service is down, and loads on first use. eSpeak NG, the TTS floor, costs a
few megabytes and milliseconds, so it is always loaded here: the caller hears it at once if the
service dies mid-sentence.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from plugins.local.speech_client import service_client
from plugins.local.whisper_stt import WhisperOptions

log = structlog.get_logger(__name__)

LOCAL_MODELS = frozenset({"local-stt", "local-tts", "free-tts", "free-stt"})


def prewarm_local_providers(
    names: Iterable[str], *, whisper: WhisperOptions | None = None
) -> list[str]:
    """Load what ``names`` need in this process; returns the providers loaded here."""
    wanted = set(names) & LOCAL_MODELS
    in_service = service_client() is not None
    loaded: list[str] = []
    if "free-tts" in wanted:
        from plugins.local.espeak_tts import EspeakEngine

        EspeakEngine.shared()
        loaded.append("free-tts")
    if not in_service:
        if "local-tts" in wanted:
            from plugins.local.hibari_tts import HibariEngine

            HibariEngine.shared()
            loaded.append("local-tts")
        if "local-stt" in wanted:
            from plugins.local.whisper_stt import WhisperEngine

            WhisperEngine.shared(whisper)
            loaded.append("local-stt")
        if "free-stt" in wanted:
            from plugins.local.sphinx_stt import SphinxEngine

            SphinxEngine.shared()
            loaded.append("free-stt")
    log.info(
        "local providers loaded",
        providers=sorted(loaded),
        in_shared_service=sorted(wanted - set(loaded)) if in_service else [],
    )
    return loaded
