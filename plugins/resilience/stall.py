"""When a live recognize stream has stopped listening: judged by the provider's own signs of life.

A recognize stream lives for a whole call and is silent while the caller is, so silence from
the provider only means something once there is speech it should have answered, and *how soon*
it should have answered depends on what this provider sends while it listens, and how fast
it usually sends it:

- A provider that sends interim results (Deepgram and Google by default) shows life about once
  a second while the caller speaks. Voiced audio unanswered by any transcript for its
  *interim window* (on the wall clock *and* in audio received: a provider cannot answer audio
  it has not been sent) means the stream has stalled.
  Its window runs on through the caller's pause (an interim sender answers the end of an
  utterance with an interim or its final within the same rhythm).
- A provider that sends no interim results (Deepgram with ``interim_results=False``, most
  self-hosted recognisers) is silent for as long as the caller talks; its sign of life is the
  final at its own endpoint, when the caller pauses. It is judged by that: voiced audio,
  then the *endpoint window* of the caller's silence (both clocks again) with no transcript,
  is a stall. While the caller keeps talking it is still listening, up to a ceiling of
  ``LISTEN_CEILING_FACTOR x`` the interim window's ceiling of unanswered speech (no
  recogniser holds back a final that long).

Both windows are the provider's own rhythm (:class:`~plugins.resilience.deadlines.Rhythm`,
kept by the guard for as long as the process lives): the interim window from the gaps
between its interim results, the endpoint window from how long after the caller's pause its
finals came, each a high quantile x factor + margin within a floor and a ceiling. Before a
rhythm is known the interim window is its ceiling and the endpoint window ``endpoint_s`` (1.5 s:
a recogniser's endpointer waits about half a second of silence, then decodes; the simulators'
finals were measured 0.9-1.4 s after the caller's pause on a loaded 2-core machine), so a
stream that never answers the first utterance of a call is caught that long after the caller
stops, not the old fixed 3 s, and one that is slow in its usual way is given the room its own
samples show (up to the ceiling).

What a provider sends is learned from the stream itself (a recognize stream lasts the whole
call): from its first interim result on, it is judged as an interim sender. Declared
capabilities are not evidence: LiveKit's Google plugin declares ``interim_results=True`` yet
drops every interim under its confidence threshold, and Google sets a confidence only on
finals, so no interim ever arrives. ``expects_interims`` is a prior for callers that know.

Time our own process could not run (a starved event loop, a CPU-bound neighbour) is not the
provider's: :meth:`StallWatch.excuse` moves every clock forward by it, so a busy machine does
not fail over a provider whose answers were waiting, unread, in our own socket buffer, nor
teach its rhythm that time.

Separately, a flush (the end of input, or LiveKit's manual flush) that follows unanswered voiced
audio must be answered within the first-result deadline ``first_s``. No audio follows a flush,
so from then on the endpoint window runs on the wall clock alone: whichever comes first.

This is a pure state machine over an explicit clock (``now`` is passed in), so every rule is
tested with a fake clock; :class:`~plugins.resilience.guard_stt.GuardedRecognizeStream` feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from plugins.resilience.deadlines import Rhythm

#: A provider without interim results may hold back its final while the caller keeps talking,
#: but not for longer than this many interim-window ceilings (15 s with the default 3 s).
LISTEN_CEILING_FACTOR = 5.0


@dataclass(frozen=True)
class Overdue:
    """What the provider failed to answer in time."""

    stalled: bool  # True: a stall mid-stream; False: no first result after a flush
    waited_s: float
    limit_s: float
    why: str


class StallWatch:
    """Follows one recognize stream's audio and transcripts; :meth:`overdue` gives the verdict.

    ``interims`` and ``endpoints`` are the provider's learned rhythms; the watch reads its
    windows from them and teaches them what it sees.
    """

    def __init__(
        self,
        *,
        first_s: float,
        interims: Rhythm,
        endpoints: Rhythm,
        expects_interims: bool,
    ) -> None:
        if first_s <= 0:
            raise ValueError(f"first-result deadline must be > 0, got {first_s}s")
        self.first_s = first_s
        self.interims = interims
        self.endpoints = endpoints
        self.sends_interims = expects_interims
        self.audio_s = 0.0  # audio received so far
        self.answered_once = False
        self._unanswered_at: float | None = None  # wall time voiced audio began unanswered
        self._unanswered_audio = 0.0  # audio_s then
        self._quiet_at: float | None = None  # the caller fell silent after unanswered speech
        self._quiet_audio = 0.0
        self._flushed_at: float | None = None  # a flush after unanswered speech

    @property
    def stall_s(self) -> float:
        """How long speech may go without an interim result from this provider."""
        return self.interims.deadline_s

    @property
    def endpoint_s(self) -> float:
        """How long after the caller pauses this provider's final may take."""
        return self.endpoints.deadline_s

    @property
    def waiting_since(self) -> float | None:
        """Where a first-result latency is measured from (the flush, else the speech)."""
        return self._flushed_at if self._flushed_at is not None else self._unanswered_at

    @property
    def flushed(self) -> bool:
        return self._flushed_at is not None

    def on_audio(self, now: float, duration_s: float, *, voiced: bool) -> None:
        self.audio_s += duration_s
        if voiced:
            if self._unanswered_at is None:
                self._unanswered_at = now
                self._unanswered_audio = self.audio_s
            self._quiet_at = None
        elif self._unanswered_at is not None and self._quiet_at is None:
            self._quiet_at = now
            self._quiet_audio = self.audio_s

    def excuse(self, lost_s: float) -> None:
        """``lost_s`` of wall time our own process did not run: no provider owed an answer in it."""
        if lost_s <= 0:
            return
        if self._unanswered_at is not None:
            self._unanswered_at += lost_s
        if self._quiet_at is not None:
            self._quiet_at += lost_s
        if self._flushed_at is not None:
            self._flushed_at += lost_s

    def on_flush(self, now: float) -> None:
        if self._unanswered_at is not None and self._flushed_at is None:
            self._flushed_at = now

    def on_transcript(self, now: float, *, final: bool) -> None:
        """A transcript: the provider has answered what it was sent so far.

        ``final`` also for an empty final (the provider heard no words in a noise it was
        sent): that is an answer too.
        """
        self.answered_once = True
        # a sample is the window that would just have let this answer through: the rule
        # needs both clocks past it, so the lesser of the two (wall time already excused)
        if final:
            if self._quiet_at is not None and self._flushed_at is None:
                self.endpoints.observe(min(now - self._quiet_at, self.audio_s - self._quiet_audio))
            self._unanswered_at = None
            self._quiet_at = None
            self._flushed_at = None
            return
        if self.sends_interims and self._unanswered_at is not None:
            self.interims.observe(
                min(now - self._unanswered_at, self.audio_s - self._unanswered_audio)
            )
        self.sends_interims = True
        if self._unanswered_at is not None:  # keeping up: the clock restarts from here
            self._unanswered_at = now
            self._unanswered_audio = self.audio_s
            self._quiet_at = None

    def overdue(self, now: float) -> Overdue | None:
        if self._flushed_at is not None and now - self._flushed_at >= self.first_s:
            return Overdue(
                self.answered_once, now - self._flushed_at, self.first_s, "no result after flush"
            )
        if self._unanswered_at is None:
            return None
        speech_wall = now - self._unanswered_at
        speech_audio = self.audio_s - self._unanswered_audio
        if self.sends_interims:
            window = self.stall_s
            if speech_wall >= window and speech_audio >= window:
                return Overdue(True, speech_wall, window, "no interim result for speech")
            return None
        if self._quiet_at is not None:
            quiet_wall = now - self._quiet_at
            window = self.endpoint_s
            # after a flush no more audio comes: the wall clock alone runs the window out
            heard = self.flushed or self.audio_s - self._quiet_audio >= window
            if quiet_wall >= window and heard:
                return Overdue(True, quiet_wall, window, "no final after the caller paused")
        ceiling = self.interims.ceiling_s * LISTEN_CEILING_FACTOR
        if speech_wall >= ceiling and speech_audio >= ceiling:
            return Overdue(True, speech_wall, ceiling, "no result for a long stretch of speech")
        return None
