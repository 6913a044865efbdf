"""Drop-in replacements for LiveKit's three ``FallbackAdapter`` classes.

``LLMFallbackAdapter``, ``STTFallbackAdapter`` and ``TTSFallbackAdapter`` take what LiveKit's
adapter of their slot takes, keep its state and its contract (the serving member's
``model``/``provider``/``metrics_metadata``, availability events, start times, recovery,
``APIConnectionError``), and add what a call needs when a provider fails mid-stream: the LLM
answer continues on the next member, TTS resumes at the first unspoken sentence, STT replays
the caller's current utterance. The three share one :class:`ChainCursor`; only the per-slot
continuation differs. Every deliberate difference from LiveKit is listed in the module
docstrings and in the README.
"""

from plugins.fallback.cursor import (
    ChainCursor,
    ChainObserver,
    ChainServed,
    ChainSwitch,
    InOrder,
    TierSelector,
)
from plugins.fallback.llm_adapter import LLMFallbackAdapter
from plugins.fallback.stt_adapter import STTFallbackAdapter
from plugins.fallback.tts_adapter import TTSFallbackAdapter

__all__ = [
    "ChainCursor",
    "ChainObserver",
    "ChainServed",
    "ChainSwitch",
    "InOrder",
    "LLMFallbackAdapter",
    "STTFallbackAdapter",
    "TTSFallbackAdapter",
    "TierSelector",
]
