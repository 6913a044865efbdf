"""How long a guard waits for a provider before abandoning it.

LiveKit's own timeouts (5-10 s, and between-bytes rather than first-token) let a silent
provider keep the caller waiting; a voice agent has about a second. Each guard keeps two
deadlines: the *first* one (first token / first audio / first result) and the *stall* one
(gap between chunks once the answer has started). Both adapt to what this provider has been
measured to do, clamped to a floor and a ceiling:

- the first deadline is p95 x factor + margin of its first-answer latencies, so a fast
  provider is abandoned sooner than a slow one but never later than ``ceiling_s``;
- the stall deadline is the high quantile (p99) x ``stall_factor`` + ``stall_margin_s`` of its
  own gaps between chunks (:class:`Rhythm`), in ``[stall_floor_s, stall_s]``. A provider that
  streams every 40 ms is declared stalled after ``stall_floor_s``, well inside the second a
  caller tolerates; one that is slow in its usual way (long pauses between chunks, every
  time) has those pauses in its own samples and is given room for them, up to ``stall_s``.
  Before enough gaps are known the deadline is ``stall_s``, the old fixed value, so nothing
  is judged on a rhythm that was never measured.

A recogniser's rhythm is learned the same way from its own signs of life (the gaps between
its interim results, and how long after the caller pauses its final comes): see
:mod:`plugins.resilience.stall`. Samples live in-process, per provider, for as long as the
guard does; a slow phase (a loaded machine) raises them, and they decay as the window moves.
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
    #: the stall deadline's ceiling (and its value before the provider's rhythm is known)
    stall_s: float
    factor: float = 2.0
    margin_s: float = 0.15
    min_samples: int = 5
    window: int = 50
    #: the least a learned stall deadline may be; ``None``: ``stall_s`` (a fixed deadline)
    stall_floor_s: float | None = None
    stall_factor: float = 2.0
    stall_margin_s: float = 0.25
    stall_min_samples: int = 5
    stall_window: int = 200
    #: STT: how long after the caller pauses a recogniser whose endpoint rhythm is not known
    #: yet may take to send its final (learned from then on, within the stall bounds)
    endpoint_s: float = 1.5
    #: STT: how long after the caller pauses a recogniser that has sent nothing at all for
    #: the utterance is given before the next member starts on it alongside (a hedge: see
    #: plugins.resilience.stall.HedgeWatch), until its endpoint rhythm is measured; from then
    #: on its own usual time (p95). Half a second: a recogniser's endpointer waits about that
    #: long for silence, and a local floor still transcribes the replay inside the second.
    hedge_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.floor_s <= self.ceiling_s:
            raise ValueError(
                f"deadline floor ({self.floor_s}s) must be > 0 and <= ceiling ({self.ceiling_s}s)"
            )
        if self.stall_s <= 0:
            raise ValueError(f"stall deadline must be > 0, got {self.stall_s}s")
        if self.factor < 1.0 or self.stall_factor < 1.0:
            raise ValueError(
                f"deadline factors must be >= 1, got {self.factor} and {self.stall_factor}"
            )
        if self.stall_floor_s is not None and not 0 < self.stall_floor_s <= self.stall_s:
            raise ValueError(
                f"stall floor ({self.stall_floor_s}s) must be > 0 and <= the stall "
                f"deadline ({self.stall_s}s)"
            )
        if self.endpoint_s <= 0:
            raise ValueError(f"endpoint deadline must be > 0, got {self.endpoint_s}s")
        if self.hedge_s <= 0:
            raise ValueError(f"hedge delay must be > 0, got {self.hedge_s}s")

    @property
    def stall_floor(self) -> float:
        return self.stall_s if self.stall_floor_s is None else self.stall_floor_s


#: Defaults per slot. LLM first token and TTS first audio are capped at 0.8 s, which leaves
#: the next provider ~200 ms to answer inside the one-second budget a caller tolerates. A
#: mid-stream stall is declared after the provider's own longest usual gap, doubled, plus a
#: quarter second: never sooner than the floor (0.4 s LLM, 0.5 s TTS: a voice's pause
#: between sentences while it renders the next one), never later than 2 s.
DEFAULT_DEADLINES: dict[Slot, DeadlineSettings] = {
    "llm": DeadlineSettings(floor_s=0.3, ceiling_s=0.8, stall_s=2.0, stall_floor_s=0.4),
    "tts": DeadlineSettings(floor_s=0.3, ceiling_s=0.8, stall_s=2.0, stall_floor_s=0.5),
    # STT: time from the end of an utterance (flush) to its transcript; between interim
    # results (about one a second of speech) and from the caller's pause to a final
    # (``endpoint_s`` until timed), learned per provider: see plugins.resilience.stall
    "stt": DeadlineSettings(
        floor_s=0.5,
        ceiling_s=1.5,
        stall_s=3.0,
        stall_floor_s=0.6,
        stall_factor=1.5,
        stall_margin_s=0.2,
        stall_min_samples=3,
        stall_window=50,
    ),
}


def _quantile(samples: deque[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class Rhythm:
    """A provider's usual gap between signs of life, and the deadline it earns.

    ``deadline_s`` is ``initial_s`` until ``min_samples`` gaps are known, then the ``quantile``
    of the last ``window`` gaps x ``factor`` + ``margin_s``, clamped to ``[floor_s,
    ceiling_s]``. Pure: the caller measures the gaps.
    """

    def __init__(
        self,
        *,
        floor_s: float,
        ceiling_s: float,
        initial_s: float,
        factor: float,
        margin_s: float,
        min_samples: int,
        window: int,
        quantile: float = 0.99,
    ) -> None:
        if not 0 < floor_s <= ceiling_s:
            raise ValueError(f"rhythm floor ({floor_s}s) must be > 0 and <= ceiling ({ceiling_s}s)")
        self.floor_s = floor_s
        self.ceiling_s = ceiling_s
        self.initial_s = min(ceiling_s, max(floor_s, initial_s))
        self.factor = factor
        self.margin_s = margin_s
        self.min_samples = max(1, min_samples)
        self.quantile = quantile
        self._samples: deque[float] = deque(maxlen=max(1, window))

    def observe(self, gap_s: float) -> None:
        if gap_s >= 0 and math.isfinite(gap_s):
            self._samples.append(gap_s)

    @property
    def samples(self) -> int:
        return len(self._samples)

    @property
    def usual_s(self) -> float | None:
        """The provider's longest usual gap (the quantile), once enough are known."""
        if len(self._samples) < self.min_samples:
            return None
        return _quantile(self._samples, self.quantile)

    @property
    def deadline_s(self) -> float:
        usual = self.usual_s
        if usual is None:
            return self.initial_s
        return min(self.ceiling_s, max(self.floor_s, usual * self.factor + self.margin_s))


class AdaptiveDeadline:
    """First-answer and stall deadlines learned from this provider's recent behaviour."""

    def __init__(self, settings: DeadlineSettings) -> None:
        self.settings = settings
        self._samples: deque[float] = deque(maxlen=settings.window)
        s = settings

        def rhythm(initial_s: float, quantile: float) -> Rhythm:
            return Rhythm(
                floor_s=s.stall_floor,
                ceiling_s=s.stall_s,
                initial_s=initial_s,
                factor=s.stall_factor,
                margin_s=s.stall_margin_s,
                min_samples=s.stall_min_samples,
                window=s.stall_window,
                quantile=quantile,
            )

        #: gaps between chunks (LLM tokens, TTS audio) or between a recogniser's interims
        self.gaps = rhythm(s.stall_s, 0.99)
        #: a recogniser's time from the caller's pause to its final
        self.endpoints = rhythm(s.endpoint_s, 0.95)

    def observe(self, latency_s: float) -> None:
        if latency_s >= 0 and math.isfinite(latency_s):
            self._samples.append(latency_s)

    def observe_gap(self, gap_s: float) -> None:
        self.gaps.observe(gap_s)

    @property
    def p95(self) -> float | None:
        if len(self._samples) < self.settings.min_samples:
            return None
        return _quantile(self._samples, 0.95)

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
        """The deadline for the next gap between chunks, from this provider's own rhythm."""
        return self.gaps.deadline_s
