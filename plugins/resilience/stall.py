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
provider's: callers pass ``now`` in run time (:mod:`plugins.resilience.run_clock`), so a busy
machine does not fail over a provider whose answers were waiting, unread, in our own socket
buffer, nor teach its rhythm that time.

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


class _CallerClock:
    """When the caller's unanswered speech began and when they fell quiet after it: what the
    stall rule and the hedge rule both judge a recogniser's silence against."""

    def __init__(self) -> None:
        self.audio_s = 0.0  # audio received so far
        self._unanswered_at: float | None = None  # wall time voiced audio began unanswered
        self._unanswered_audio = 0.0  # audio_s then
        self._quiet_at: float | None = None  # the caller fell silent after unanswered speech
        self._quiet_audio = 0.0

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


class StallWatch(_CallerClock):
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
        self.answered_once = False
        _CallerClock.__init__(self)
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
        # needs both clocks past it, so the lesser of the two (run time)
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


#: The least quiet that counts as the caller's pause for a hedge: shorter silences are the
#: gaps between words, and our own voiced/unvoiced judgement is per 20 ms frame.
HEDGE_MIN_PAUSE_S = 0.25


class HedgeWatch(_CallerClock):
    """When the next recogniser should start on the caller's utterance *alongside* this one.

    A stall verdict (:class:`StallWatch`) has to be sure: it fails the provider over and
    counts toward its breaker, so it waits for the provider's own window (its usual time x a
    factor + a margin) and, before that is known, a generous 1.5 s. A caller who has stopped
    talking waits through all of it. A *hedge* only has to be likely: it starts the next
    member on the buffered utterance while this one keeps its chance, and whichever gives
    the final first is the one the caller gets. So it fires as soon as the provider is later
    than it *usually* is, read from the same learned rhythms, without the factor or margin:

    - a provider known to send interim results (it sent one on this stream, or its interim
      rhythm is known from earlier streams) that leaves voiced audio unanswered for its usual
      longest gap between interims (the rhythm's quantile);
    - any provider that has not sent the final ``endpoint_s`` after the caller paused: its
      usual time from a pause to its final (the endpoint rhythm's quantile); never sooner
      than :data:`HEDGE_MIN_PAUSE_S`, never later than the endpoint window itself (by then
      the stall verdict takes over). Before that rhythm is known, ``prior_s`` for a provider
      that sent nothing at all for the utterance (not one interim: a non-interim recogniser,
      or one that stopped listening), and no hedge for one that kept up with interims while
      the caller spoke: it is alive, and a guess below its real endpointing would hedge every
      utterance of a healthy provider.

    On both clocks (wall and audio received), like :class:`StallWatch`: a provider cannot
    answer audio it has not been sent. Reads the rhythms and never teaches them (the guard's
    :class:`StallWatch` does). Pure, over an explicit clock.
    """

    def __init__(
        self,
        *,
        interims: Rhythm,
        endpoints: Rhythm,
        prior_s: float,
        sends_interims: bool = False,
    ) -> None:
        if prior_s <= 0:
            raise ValueError(f"hedge prior must be > 0, got {prior_s}s")
        self.interims = interims
        self.endpoints = endpoints
        self.prior_s = prior_s
        self.sends_interims = sends_interims or interims.usual_s is not None
        _CallerClock.__init__(self)
        self._flushed = False
        self._kept_up = False  # an interim came for the utterance owed

    @property
    def interim_s(self) -> float | None:
        """Voiced audio may go this long without an interim before a hedge (interim senders)."""
        usual = self.interims.usual_s
        if usual is None or not self.sends_interims:
            return None
        return min(self.interims.deadline_s, max(self.interims.floor_s, usual))

    @property
    def endpoint_s(self) -> float | None:
        """The caller's pause may go this long without a final before a hedge (``None``: no
        hedge at the pause)."""
        usual = self.endpoints.usual_s
        if usual is None:
            if self._kept_up:
                return None
            usual = self.prior_s
        return min(self.endpoints.deadline_s, max(HEDGE_MIN_PAUSE_S, usual))

    def on_flush(self) -> None:
        """No audio follows (end of input or a flush): the wall clock alone runs the pause."""
        self._flushed = self._unanswered_at is not None

    def on_transcript(self, now: float, *, final: bool) -> None:
        """Text from the provider: a final settles the utterance, an interim shows it keeps up."""
        if final:
            self.settle()
            return
        self.sends_interims = True
        if self._unanswered_at is not None:
            # keeping up: both clocks restart here, the pause's too (the next quiet frame
            # re-arms it), as the guard's watch measures the endpoint rhythm it learns
            self._unanswered_at = now
            self._unanswered_audio = self.audio_s
            self._quiet_at = None
            self._kept_up = True

    def settle(self) -> None:
        """The utterance is answered (by this provider or by the hedge): nothing is owed."""
        self._unanswered_at = None
        self._quiet_at = None
        self._flushed = False
        self._kept_up = False

    def due(self, now: float) -> str | None:
        """Why a hedge should start now, or ``None``."""
        if self._unanswered_at is None:
            return None
        window = self.interim_s
        if (
            window is not None
            and self._quiet_at is None
            and now - self._unanswered_at >= window
            and self.audio_s - self._unanswered_audio >= window
        ):
            return f"no interim result within its usual {window:.2f}s"
        if self._quiet_at is not None and (window := self.endpoint_s) is not None:
            heard = self._flushed or self.audio_s - self._quiet_audio >= window
            if now - self._quiet_at >= window and heard:
                return f"no final within its usual {window:.2f}s of the caller's pause"
        return None
