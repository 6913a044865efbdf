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
#: how a tier shares its traffic: by weight (keys of one account pool) or closest first
Balance = Literal["weighted", "closest"]


@dataclass(frozen=True)
class ProviderSpec:
    """One provider in one slot's chain.

    ``name`` is a catalog name (``cartesia``, ``local-tts``...), or any name when ``factory``
    is given: a custom provider in code, as a function ``(spec, build_context) -> plugin`` or
    a ready LiveKit STT/LLM/TTS, guarded like any cloud provider. ``api_key`` is a secret: it
    is excluded from ``repr`` so a spec can be logged safely. ``member``, ``tier``, ``weight``
    and ``balance`` place it in a pool of equals (see :mod:`plugins.providers.pool`).
    """

    slot: Slot
    name: str
    base_url: str | None = None
    model: str | None = None
    voice: str | None = None
    api_key: str | None = field(default=None, repr=False)
    extra: dict[str, str] = field(default_factory=dict)
    factory: Factory | Plugin | None = field(default=None, repr=False, compare=False)
    #: one member of a pool (several keys or endpoints of one provider): 1, 2, ...
    member: int | None = None
    #: members of one slot with the same tier share the traffic (by weight, or closest first)
    tier: str | None = None
    weight: float = 1.0
    balance: Balance = "weighted"

    @property
    def key(self) -> str:
        """Identity used by the health store: the same provider in another slot is another key,
        each member of a key pool its own (``llm:openai#2``), never naming the key itself."""
        suffix = f"#{self.member}" if self.member is not None else ""
        return f"{self.slot}:{self.name}{suffix}"

    @property
    def provider_key(self) -> str:
        """``slot:name`` without the pool member."""
        return f"{self.slot}:{self.name}"
