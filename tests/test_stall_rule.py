"""The STT stall rule judges each provider by its own signs of life (fake clock, no sockets).

A provider that sends interim results must keep sending them while the caller speaks; one that
sends none is still listening while the caller talks, and owes its final once the caller
pauses. A genuinely stalled stream is caught either way.
"""

from __future__ import annotations

import pytest

from plugins.resilience.stall import LISTEN_CEILING_FACTOR, StallWatch

FRAME = 0.02
STALL = 3.0
FIRST = 1.5


class Line:
    """Feeds a watch 20 ms frames on a fake clock, as a phone line would in real time."""

    def __init__(self, *, interims: bool) -> None:
        self.now = 100.0
        self.watch = StallWatch(first_s=FIRST, stall_s=STALL, expects_interims=interims)

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
    line = Line(interims=False)
    line.speak(4.0)
    waited = line.run_until_overdue(5.0, voiced=False)
    assert waited == pytest.approx(STALL, abs=0.05)
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
    with pytest.raises(ValueError, match="deadlines must be > 0"):
        StallWatch(first_s=0, stall_s=1, expects_interims=True)


def test_time_our_own_process_lost_is_not_charged_to_the_provider() -> None:
    line = Line(interims=True)
    line.speak(1.0)
    line.watch.on_transcript(line.now, final=False)
    line.speak(2.0)
    line.now += 2.0  # the event loop was starved for 2 s; nothing could be read
    line.watch.on_audio(line.now, 2.0, voiced=True)  # the audio it queued arrives at once
    assert line.watch.overdue(line.now) is not None  # charged: 4 s since the last interim
    line.watch.excuse(2.0)
    assert line.watch.overdue(line.now) is None  # excused: 2 s of the provider's time
    waited = line.run_until_overdue(2.0, voiced=True)
    assert waited == pytest.approx(1.0, abs=0.05)  # the rest of its window still runs
    line.watch.excuse(-1.0)  # a tick early is no credit
