"""Load the local models a process will need, once, before the first call needs them."""

from __future__ import annotations

from collections.abc import Iterable

import structlog

log = structlog.get_logger(__name__)


def prewarm_local_providers(names: Iterable[str]) -> None:
    wanted = set(names)
    if "local-tts" in wanted:
        from plugins.local.hibari_tts import HibariEngine

        HibariEngine.shared()
    if "free-tts" in wanted:
        from plugins.local.espeak_tts import EspeakEngine

        EspeakEngine.shared()
    if "free-stt" in wanted:
        from plugins.local.sphinx_stt import SphinxEngine

        SphinxEngine.shared()
    log.info(
        "local providers loaded", providers=sorted(wanted & {"local-tts", "free-tts", "free-stt"})
    )
