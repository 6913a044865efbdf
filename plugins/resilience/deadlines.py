"""How long a guard waits for a provider before abandoning it.

LiveKit's own timeouts (5-10 s, and between-bytes rather than first-token) let a silent
provider keep the caller waiting; a voice agent has about a second. Each guard keeps two
deadlines: the *first* one (first token / first audio / first result) and the *stall* one
(gap between chunks once the answer has started). The first deadline adapts to what the
provider has been measured to need - p95 x factor + margin - clamped to [floor, ceiling], so
a fast provider is abandoned sooner than a slow one but never later than the ceiling.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from plugins.spec import Slot


@dataclass(frozen=True)
class DeadlineSettings:
    floor_s: float
    ceiling_s: float
    stall_s: float
    factor: float = 2.0
    margin_s: float = 0.15
    min_samples: int = 5
    window: int = 50

    def __post_init__(self) -> None:
        if not 0 < self.floor_s <= self.ceiling_s:
            raise ValueError(
                f"deadline floor ({self.floor_s}s) must be > 0 and <= ceiling ({self.ceiling_s}s)"
            )
        if self.stall_s <= 0:
            raise ValueError(f"stall deadline must be > 0, got {self.stall_s}s")
        if self.factor < 1.0:
            raise ValueError(f"deadline factor must be >= 1, got {self.factor}")


#: Defaults per slot. LLM first token and TTS first audio are capped at 0.8 s, which leaves
#: the next provider ~200 ms to answer inside the one-second budget a caller tolerates.
DEFAULT_DEADLINES: dict[Slot, DeadlineSettings] = {
    "llm": DeadlineSettings(floor_s=0.3, ceiling_s=0.8, stall_s=2.0),
    "tts": DeadlineSettings(floor_s=0.3, ceiling_s=0.8, stall_s=2.0),
    # STT: time from the end of an utterance (flush) to its transcript, and between results
    "stt": DeadlineSettings(floor_s=0.5, ceiling_s=1.5, stall_s=3.0),
}


class AdaptiveDeadline:
    """First-answer deadline learned from this provider's recent latencies (in-process)."""

    def __init__(self, settings: DeadlineSettings) -> None:
        self.settings = settings
        self._samples: deque[float] = deque(maxlen=settings.window)

    def observe(self, latency_s: float) -> None:
        if latency_s >= 0 and math.isfinite(latency_s):
            self._samples.append(latency_s)

    @property
    def p95(self) -> float | None:
        if len(self._samples) < self.settings.min_samples:
            return None
        ordered = sorted(self._samples)
        index = min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)
        return ordered[index]

    @property
    def first_s(self) -> float:
        """The deadline for the first token/audio/result of the next request."""
        s = self.settings
        p95 = self.p95
        if p95 is None:
            return s.ceiling_s
        return min(s.ceiling_s, max(s.floor_s, p95 * s.factor + s.margin_s))

    @property
    def stall_s(self) -> float:
        return self.settings.stall_s
