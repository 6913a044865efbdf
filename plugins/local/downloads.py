"""``download-files`` for the local models: fetch a larger Whisper where the network allows.

The packaged models (Whisper tiny.en, hibari, PocketSphinx, eSpeak NG) need nothing. When
``local-stt`` names a larger faster-whisper model (``base.en``, ``small.en``...), LiveKit's
``download-files`` (run at image build) fetches it into the Hugging Face cache; where that fails
the worker keeps the packaged tiny.en, and both say so.
"""

from __future__ import annotations

import structlog
from livekit.agents import Plugin

from plugins.local.whisper_stt import PACKAGED_MODEL, resolve_model_dir

log = structlog.get_logger(__name__)


class LocalSpeechFiles(Plugin):
    """Registered by the worker (on the main thread) with the configured local-stt model."""

    def __init__(self, stt_model: str) -> None:
        super().__init__("never-silent local speech", "0.1.0", "plugins.local.whisper_stt")
        self.stt_model = stt_model

    def download_files(self) -> None:
        if self.stt_model == PACKAGED_MODEL:
            log.info("local-stt uses the packaged model; nothing to download", model=PACKAGED_MODEL)
            return
        try:
            path = resolve_model_dir(self.stt_model, allow_download=True)
        except FileNotFoundError as e:
            log.warning(
                "local-stt model not downloaded; the packaged one stays in use",
                model=self.stt_model,
                packaged=PACKAGED_MODEL,
                error=str(e),
            )
            return
        log.info("local-stt model ready", model=self.stt_model, path=str(path))
