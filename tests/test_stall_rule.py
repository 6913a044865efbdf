"""The STT stall rule judges each provider by its own signs of life (fake clock, no sockets).

A provider that sends interim results must keep sending them while the caller speaks; one that
sends none is still listening while the caller talks, and owes its final once the caller
pauses. A genuinely stalled stream is caught either way, within the provider's own learned
rhythm once it is known.
"""

from __future__ import annotations

import pytest

from plugins.resilience.deadlines import AdaptiveDeadline, DeadlineSettings
from plugins.resilience.stall import LISTEN_CEILING_FACTOR, StallWatch

FRAME = 0.02
STALL = 3.0  # the interim window's ceiling, and its value before the rhythm is known
ENDPOINT = 1.5  # the endpoint window before the provider's finals were timed
FIRST = 1.5
SETTINGS = DeadlineSettings(
    floor_s=0.5,
    ceiling_s=FIRST,
    stall_s=STALL,
    stall_floor_s=0.6,
    stall_factor=1.5,
    stall_margin_s=0.2,
    stall_min_samples=3,
    endpoint_s=ENDPOINT,
)


class Line:
    """Feeds a watch 20 ms frames on a fake clock, as a phone line would in real time."""

    def __init__(self, *, interims: bool, deadline: AdaptiveDeadline | None = None) -> None:
        self.now = 100.0
        self.deadline = deadline or AdaptiveDeadline(SETTINGS)  # the guard's: outlives a stream
        self.watch = StallWatch(
            first_s=FIRST,
            interims=self.deadline.gaps,
            endpoints=self.deadline.endpoints,
            expects_interims=interims,
        )

    def speak(self, seconds: float, *, voiced: bool = True) -> None:
        for _ in range(round(seconds / FRAME)):
            self.now += FRAME
            self.watch.on_audio(self.now, FRAME, voiced=voiced)
            assert self.watch.overdue(self.now) is None, f"judged overdue at {self.now}"

    def pause(self, seconds: float) -> None:
        self.speak(seconds, voiced=False)

    def run_until_overdue(self, seconds: float, *, voiced: bool) -> float:
        """Seconds until the verdict (fails if none comes within ``seconds``)."""
        started = self.now
        for _ in range(round(seconds / FRAME)):
            self.now += FRAME
            self.watch.on_audio(self.now, FRAME, voiced=voiced)
            if self.watch.overdue(self.now) is not None:
                return self.now - started
        raise AssertionError(f"no verdict within {seconds} s")


def test_interim_sender_is_not_failed_while_its_interims_keep_coming() -> None:
    line = Line(interims=True)
    for _ in range(10):  # a 10 s caller turn, an interim every second
        line.speak(1.0)
        line.watch.on_transcript(line.now, final=False)
    line.pause(0.6)
    line.watch.on_transcript(line.now, final=True)
    line.pause(10.0)  # silence owes nothing


def test_interim_sender_that_goes_quiet_mid_speech_is_a_stall() -> None:
    line = Line(interims=True)
    line.speak(1.0)
    line.watch.on_transcript(line.now, final=False)
    waited = line.run_until_overdue(5.0, voiced=True)
    assert waited == pytest.approx(STALL, abs=0.05)
    verdict = line.watch.overdue(line.now)
    assert verdict is not None and verdict.stalled and verdict.limit_s == STALL


def test_provider_without_interims_is_still_listening_through_a_long_turn() -> None:
    """The failure issue 11 describes: a 10 s turn with no interim is not a stall."""
    line = Line(interims=False)
    line.speak(10.0)  # no transcript at all for 10 s of speech: still listening
    line.pause(0.8)
    line.watch.on_transcript(line.now, final=True)  # its final at its endpoint
    line.pause(10.0)


def test_provider_without_interims_owes_its_final_once_the_caller_pauses() -> None:
    """Issue 12's regression: a recogniser never heard from is caught 1.5 s after the pause
    (it was 3 s), without waiting for a rhythm it has never shown."""
    line = Line(interims=False)
    line.speak(4.0)
    waited = line.run_until_overdue(5.0, voiced=False)
    assert waited == pytest.approx(ENDPOINT, abs=0.05)
    verdict = line.watch.overdue(line.now)
    assert verdict is not None and verdict.stalled
    assert verdict.why == "no final after the caller paused"


def test_provider_without_interims_has_a_ceiling_on_unanswered_speech() -> None:
    line = Line(interims=False)
    waited = line.run_until_overdue(30.0, voiced=True)
    assert waited == pytest.approx(STALL * LISTEN_CEILING_FACTOR, abs=0.05)


def test_a_provider_that_sends_interims_is_judged_by_them_from_then_on() -> None:
    line = Line(interims=False)  # declared none
    line.speak(1.0)
    line.watch.on_transcript(line.now, final=False)  # but sends them
    assert line.watch.sends_interims
    waited = line.run_until_overdue(5.0, voiced=True)
    assert waited == pytest.approx(STALL, abs=0.05)


def test_audio_sent_faster_than_real_time_is_not_a_stall_before_it_is_heard() -> None:
    """Both clocks must pass: 3 s of wall time over 1 s of audio is not a stall yet."""
    line = Line(interims=True)
    line.speak(0.5)
    line.now += STALL  # the wall clock runs, no audio arrives (the line is paced)
    assert line.watch.overdue(line.now) is None


@pytest.mark.parametrize("interims", [True, False])
def test_a_flush_after_speech_is_owed_a_result_within_the_first_deadline(interims: bool) -> None:
    line = Line(interims=interims)
    line.speak(1.0)
    line.watch.on_flush(line.now)
    assert line.watch.waiting_since == line.now
    line.now += FIRST - 0.01
    assert line.watch.overdue(line.now) is None
    line.now += 0.02
    verdict = line.watch.overdue(line.now)
    assert verdict is not None and not verdict.stalled and verdict.limit_s == FIRST


def test_a_flush_over_silence_owes_nothing() -> None:
    line = Line(interims=True)
    line.pause(2.0)
    line.watch.on_flush(line.now)
    line.now += 10.0
    assert line.watch.overdue(line.now) is None
    assert not line.watch.flushed


def test_bad_deadlines_are_refused() -> None:
    rhythm = AdaptiveDeadline(SETTINGS)
    with pytest.raises(ValueError, match="first-result deadline must be > 0"):
        StallWatch(
            first_s=0, interims=rhythm.gaps, endpoints=rhythm.endpoints, expects_interims=True
        )
    with pytest.raises(ValueError, match="stall floor"):
        DeadlineSettings(floor_s=0.5, ceiling_s=1.0, stall_s=1.0, stall_floor_s=2.0)


# -- the provider's own rhythm ----------------------------------------------------------------


def _answer_turn(line: Line, *, speech_s: float, final_after_s: float) -> None:
    """A turn the provider answers with its final ``final_after_s`` after the caller pauses."""
    line.speak(speech_s)
    line.pause(final_after_s)
    line.watch.on_transcript(line.now, final=True)
    line.pause(1.0)


def test_finals_only_provider_is_then_judged_by_its_own_endpoint_rhythm() -> None:
    """Finals 0.4 s after each pause: a stall is then caught within 0.8 s of the pause."""
    line = Line(interims=False)
    for _ in range(3):
        _answer_turn(line, speech_s=2.0, final_after_s=0.4)
    learned = 0.4 * SETTINGS.stall_factor + SETTINGS.stall_margin_s
    assert line.watch.endpoint_s == pytest.approx(learned, abs=0.05)
    line.speak(2.0)
    waited = line.run_until_overdue(3.0, voiced=False)
    assert waited == pytest.approx(learned, abs=0.05)
    assert waited < 1.0


def test_a_slow_but_steady_endpointer_is_never_failed_for_its_usual_pace() -> None:
    """Finals 1.3 s after each pause, every time: its window grows to fit, up to the ceiling."""
    line = Line(interims=False)
    for _ in range(8):
        _answer_turn(line, speech_s=1.5, final_after_s=1.3)  # Line.speak asserts no verdict
    assert line.watch.endpoint_s == pytest.approx(1.3 * 1.5 + 0.2, abs=0.05)


def test_the_rhythm_outlives_the_stream() -> None:
    """A reconnected stream (a new StallWatch on the same guard) keeps what was learned."""
    first = Line(interims=False)
    for _ in range(3):
        _answer_turn(first, speech_s=1.0, final_after_s=0.3)
    again = Line(interims=False, deadline=first.deadline)
    assert again.watch.endpoint_s == pytest.approx(0.3 * 1.5 + 0.2, abs=0.05)


def test_an_interim_sender_is_judged_by_its_learned_interim_rhythm() -> None:
    line = Line(interims=True)
    for _ in range(6):  # an interim every second of speech
        line.speak(1.0)
        line.watch.on_transcript(line.now, final=False)
    learned = 1.0 * SETTINGS.stall_factor + SETTINGS.stall_margin_s  # 1.7 s, not 3 s
    assert line.watch.stall_s == pytest.approx(learned, abs=0.05)
    waited = line.run_until_overdue(4.0, voiced=True)
    assert waited == pytest.approx(learned, abs=0.06)


def test_a_steady_interim_rhythm_slower_than_the_learned_window_is_not_a_stall() -> None:
    """Interims every 2.5 s (a slow recogniser): never failed, its window is its ceiling."""
    line = Line(interims=True)
    for _ in range(8):
        line.speak(2.5)
        line.watch.on_transcript(line.now, final=False)
    assert line.watch.stall_s == STALL


def test_a_flush_during_the_pause_does_not_hold_the_endpoint_window_open() -> None:
    """The caller paused 1 s, then the input ended: the endpoint window still runs out on
    time (the audio clock stopped with the input), before the flush's own deadline."""
    line = Line(interims=False)
    line.speak(3.0)
    line.pause(1.0)
    line.watch.on_flush(line.now)
    line.now += ENDPOINT - 1.0 - 0.03
    assert line.watch.overdue(line.now) is None
    line.now += 0.06
    verdict = line.watch.overdue(line.now)
    assert verdict is not None and verdict.why == "no final after the caller paused"
