"""When a late recogniser gets the next one started alongside it (fake clock, no sockets).

A hedge fires once the provider is later than it *usually* is, read from the rhythms its
guard learned: the usual gap between its interims while the caller speaks, the usual time
from the caller's pause to its final. Before its endpoint rhythm is known, only a provider
that sent nothing at all for the utterance is hedged at the pause (after the prior); one
that kept up with interims is alive and is left to its stall window.
"""

from __future__ import annotations

import dataclasses

import pytest

from plugins.resilience.deadlines import DEFAULT_DEADLINES, AdaptiveDeadline, DeadlineSettings
from plugins.resilience.stall import HEDGE_MIN_PAUSE_S, HedgeWatch

FRAME = 0.02
PRIOR = 0.5
SETTINGS = dataclasses.replace(DEFAULT_DEADLINES["stt"], endpoint_s=1.5, hedge_s=PRIOR)


class Line:
    """20 ms frames on a fake clock, into a hedge watch over a guard's learned rhythms."""

    def __init__(self, deadline: AdaptiveDeadline | None = None) -> None:
        self.now = 100.0
        self.deadline = deadline or AdaptiveDeadline(SETTINGS)
        self.watch = HedgeWatch(
            interims=self.deadline.gaps,
            endpoints=self.deadline.endpoints,
            prior_s=self.deadline.settings.hedge_s,
        )

    def frames(self, seconds: float, *, voiced: bool) -> float | None:
        """Feed ``seconds`` of audio; the time into it when the hedge became due, if it did."""
        started = self.now
        for _ in range(round(seconds / FRAME)):
            self.now += FRAME
            self.watch.on_audio(self.now, FRAME, voiced=voiced)
            if self.watch.due(self.now) is not None:
                return self.now - started
        return None

    def interim(self) -> None:
        self.watch.on_transcript(self.now, final=False)


def learned(*, endpoints: list[float] = (), gaps: list[float] = ()) -> AdaptiveDeadline:
    deadline = AdaptiveDeadline(SETTINGS)
    for sample in endpoints:
        deadline.endpoints.observe(sample)
    for gap in gaps:
        deadline.gaps.observe(gap)
    return deadline


def test_a_provider_silent_for_the_whole_utterance_is_hedged_after_the_prior() -> None:
    line = Line()
    assert line.frames(3.0, voiced=True) is None  # never while the caller speaks (cold)
    due = line.frames(2.0, voiced=False)
    assert due == pytest.approx(PRIOR, abs=2.5 * FRAME)
    assert "pause" in (line.watch.due(line.now) or "")


def test_a_provider_that_kept_up_with_interims_is_not_hedged_before_its_rhythm_is_known() -> None:
    """A healthy interim sender that endpoints later than the prior must not be hedged on
    every utterance on a guess."""
    line = Line()
    for _ in range(3):
        assert line.frames(1.0, voiced=True) is None
        line.interim()
    assert line.frames(1.4, voiced=False) is None  # up to the stall window: the guard's call


def test_slow_in_its_usual_way_is_given_its_usual_time() -> None:
    """Its finals usually come 1.1 s after the pause: hedged after that, not after the prior."""
    line = Line(learned(endpoints=[0.9, 1.0, 1.1]))
    line.frames(2.0, voiced=True)
    line.interim()
    due = line.frames(2.0, voiced=False)
    assert due == pytest.approx(1.1, abs=2.5 * FRAME)
    assert line.watch.endpoint_s is not None
    assert line.watch.endpoint_s <= line.deadline.endpoints.deadline_s


def test_a_fast_endpointer_is_hedged_sooner_but_not_on_a_gap_between_words() -> None:
    line = Line(learned(endpoints=[0.05, 0.08, 0.1]))
    line.frames(1.0, voiced=True)
    assert line.frames(HEDGE_MIN_PAUSE_S - 2 * FRAME, voiced=False) is None
    line.frames(0.2, voiced=True)  # the caller goes on
    due = line.frames(1.0, voiced=False)
    assert due == pytest.approx(HEDGE_MIN_PAUSE_S, abs=2.5 * FRAME)


def test_a_known_interim_sender_is_hedged_during_speech_after_its_usual_gap() -> None:
    """Interims usually come every 0.8-1.0 s: voiced audio unanswered for 1.0 s is late, and
    the hedge starts before the caller even pauses (it then follows the live audio)."""
    line = Line(learned(gaps=[0.8, 0.9, 1.0]))
    due = line.frames(3.0, voiced=True)
    assert due == pytest.approx(1.0, abs=2.5 * FRAME)


def test_interims_keep_a_known_interim_sender_unhedged_while_the_caller_speaks() -> None:
    line = Line(learned(gaps=[0.8, 0.9, 1.0]))
    for _ in range(5):
        assert line.frames(0.9, voiced=True) is None
        line.interim()


def test_a_final_settles_the_utterance() -> None:
    line = Line()
    line.frames(1.0, voiced=True)
    line.watch.on_transcript(line.now, final=True)
    assert line.frames(2.0, voiced=False) is None


def test_after_the_end_of_input_the_wall_clock_alone_runs_the_pause() -> None:
    line = Line()
    line.frames(1.0, voiced=True)
    line.frames(0.1, voiced=False)
    line.watch.on_flush()
    assert line.watch.due(line.now + PRIOR - 0.15) is None
    assert line.watch.due(line.now + PRIOR) is not None


def test_the_hedge_never_waits_longer_than_the_stall_window() -> None:
    line = Line(learned(endpoints=[5.0, 5.0, 5.0]))
    assert line.watch.endpoint_s == line.deadline.endpoints.deadline_s == SETTINGS.stall_s


def test_the_prior_must_be_positive() -> None:
    with pytest.raises(ValueError, match="hedge"):
        DeadlineSettings(floor_s=0.5, ceiling_s=1.5, stall_s=3.0, hedge_s=0.0)


def test_an_interim_in_the_pause_restarts_the_pause_clock() -> None:
    """The guard learns the endpoint rhythm from the last sign of life to the final; the
    hedge reads it the same way, so an interim sent in the pause starts the wait again."""
    line = Line(learned(endpoints=[0.4, 0.4, 0.4]))
    line.frames(1.0, voiced=True)
    assert line.frames(0.3, voiced=False) is None
    line.interim()
    due = line.frames(1.0, voiced=False)
    assert due == pytest.approx(0.4, abs=2.5 * FRAME)
