"""What a provider *is*, independent of how it is built: the unit the chain builder consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Slot = Literal["stt", "llm", "tts"]


@dataclass(frozen=True)
class ProviderSpec:
    """One provider in one slot's chain.

    ``name`` is the catalog name (``cartesia``, ``local-tts``...). ``api_key`` is a secret: it is
    excluded from ``repr`` so a spec can be logged safely.
    """

    slot: Slot
    name: str
    base_url: str | None = None
    model: str | None = None
    voice: str | None = None
    api_key: str | None = field(default=None, repr=False)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identity used by the health store: the same provider in another slot is another key."""
        return f"{self.slot}:{self.name}"


# Every provider the catalog can build, per slot, in the default order (DESIGN.md). The free
# providers need no network and no key; the chain builder always ends a chain with them.
KNOWN_PROVIDERS: dict[Slot, tuple[str, ...]] = {
    "stt": ("deepgram", "google", "whisper", "free-stt"),
    "llm": ("openrouter", "openai", "google", "free-llm"),
    "tts": ("cartesia", "local-tts", "elevenlabs", "free-tts"),
}
LOCAL_PROVIDERS: frozenset[str] = frozenset({"free-stt", "free-llm", "local-tts", "free-tts"})
FLOOR_PROVIDER: dict[Slot, str] = {"stt": "free-stt", "llm": "free-llm", "tts": "free-tts"}
