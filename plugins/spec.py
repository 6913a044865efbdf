"""What one provider in one chain is, independent of how it is built: the chain builder's unit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from livekit.agents import llm, stt, tts

    Plugin = stt.STT[Any] | llm.LLM[Any] | tts.TTS[Any]
    #: Builds the plugin from the spec and the chain's build context (a ``BuildContext``).
    Factory = Callable[["ProviderSpec", Any], Plugin]

Slot = Literal["stt", "llm", "tts"]


@dataclass(frozen=True)
class ProviderSpec:
    """One provider in one slot's chain.

    ``name`` is a catalog name (``cartesia``, ``local-tts``...), or any name when ``factory``
    is given: a custom provider in code, as a function ``(spec, build_context) -> plugin`` or
    a ready LiveKit STT/LLM/TTS, guarded like any cloud provider. ``api_key`` is a secret: it
    is excluded from ``repr`` so a spec can be logged safely.
    """

    slot: Slot
    name: str
    base_url: str | None = None
    model: str | None = None
    voice: str | None = None
    api_key: str | None = field(default=None, repr=False)
    extra: dict[str, str] = field(default_factory=dict)
    factory: Factory | Plugin | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        """Identity used by the health store: the same provider in another slot is another key."""
        return f"{self.slot}:{self.name}"
