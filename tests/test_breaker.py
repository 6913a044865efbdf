"""The breaker's rules, Resilience4j-style: record outcomes directly, move a fake clock, assert."""

from __future__ import annotations

import calendar
import json

import pytest

from plugins.resilience.breaker import (
    Breaker,
    BreakerConfig,
    BreakerRecord,
    key_fingerprint,
    period_end,
)
from plugins.resilience.types import Admission, BreakerState, Failure, FailureKind

T0 = float(calendar.timegm((2026, 11, 25, 13, 0, 0)))  # a Wednesday, 13:00 UTC
JITTER = 0.0  # the uniform draw: 0 opens for exactly the backoff ceiling

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN


def fail(kind: FailureKind = FailureKind.SERVER_ERROR, **kw: float) -> Failure:
    return Failure(kind, f"{kind.value} from the simulator", **kw)  # type: ignore[arg-type]


class Machine:
    """One breaker record driven by a fake clock."""

    def __init__(self, config: BreakerConfig | None = None, jitter: float = JITTER) -> None:
        self.now = T0
        self.breaker = Breaker(config, jitter=lambda: jitter)
        self.rec = BreakerRecord()

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def admit(self) -> Admission:
        return self.breaker.admit(self.rec, self.now)

    def ok(self) -> BreakerState:
        return self.breaker.record_success(self.rec, self.now)

    def fail(self, kind: FailureKind = FailureKind.SERVER_ERROR, **kw: float) -> BreakerState:
        return self.breaker.record_failure(self.rec, fail(kind, **kw), self.now)

    def trip_and_wait(self) -> None:
        """Trip from CLOSED by consecutive failures and wait out the open time."""
        for _ in range(self.breaker.config.consecutive_failures):
            self.fail()
        assert self.rec.state is OPEN
        self.wait_out()

    def wait_out(self) -> None:
        assert self.rec.open_until is not None
        self.now = self.rec.open_until


# -- closed -> open -----------------------------------------------------------------------


def test_closed_admits_and_two_failures_do_not_trip() -> None:
    m = Machine()
    assert m.admit().allowed
    assert m.fail() is CLOSED
    assert m.fail() is CLOSED
    assert m.admit().allowed and m.admit().state is CLOSED


def test_three_consecutive_failures_trip_for_base_time_plus_jitter() -> None:
    m = Machine()
    m.fail()
    m.fail()
    assert m.fail() is OPEN
    assert m.rec.open_until == pytest.approx(T0 + 5.0)
    assert m.rec.trips == 1
    denied = m.admit()
    assert not denied.allowed
    assert denied.state is OPEN
    assert denied.until == m.rec.open_until
    assert "server_error until" in denied.reason


def test_success_resets_the_consecutive_count() -> None:
    m = Machine(BreakerConfig(minimum_calls=100))  # only the consecutive rule
    for _ in range(5):
        m.fail()
        m.fail()
        assert m.ok() is CLOSED
    assert m.rec.consecutive_failures == 0
    m.fail()
    m.fail()
    assert m.fail() is OPEN


def test_failure_rate_trips_once_minimum_calls_are_in_the_window() -> None:
    m = Machine()
    m.ok()
    m.fail()
    m.ok()  # 3 calls, 1 failure: below the minimum of 4 calls anyway
    assert m.rec.state is CLOSED
    assert m.fail() is OPEN  # 4 calls, 2 failures = 50%, never 3 in a row
    assert m.rec.opened_by is FailureKind.SERVER_ERROR


def test_failure_rate_below_threshold_does_not_trip() -> None:
    m = Machine()
    for _ in range(4):
        m.ok()
        m.ok()
        assert m.fail() is CLOSED  # 33%
    assert m.rec.state is CLOSED


def test_minimum_calls_is_required_before_the_rate_counts() -> None:
    m = Machine(BreakerConfig(minimum_calls=4, consecutive_failures=10))
    m.fail()
    m.ok()
    assert m.fail() is CLOSED  # 67% over 3 calls: too few to judge
    assert m.ok() is CLOSED  # a success never trips
    assert m.fail() is OPEN  # 3 of 5 = 60%


def test_time_window_forgets_old_outcomes() -> None:
    m = Machine()
    m.ok()
    m.fail()
    m.fail()
    m.advance(31)  # the window is 30 s: those three calls are gone
    assert m.ok() is CLOSED
    assert m.fail() is CLOSED
    assert sum(b[1] for b in m.rec.window) == 2


def test_outcomes_inside_the_window_still_count() -> None:
    m = Machine()
    m.ok()
    m.fail()
    m.advance(29)
    m.ok()
    assert m.fail() is OPEN  # 2 of 4 within 30 s


# -- open -> half-open -> closed / open ----------------------------------------------------


def test_open_moves_to_half_open_lazily_and_admits_exactly_one_probe() -> None:
    m = Machine()
    m.trip_and_wait()
    m.now -= 0.001
    assert not m.admit().allowed
    m.now += 0.001
    probe = m.admit()
    assert probe.allowed and probe.is_probe and probe.state is HALF_OPEN
    second = m.admit()
    assert not second.allowed
    assert second.state is HALF_OPEN
    assert "probing" in second.reason


def test_probe_lease_expires_so_a_crashed_prober_does_not_wedge_it() -> None:
    m = Machine(BreakerConfig(probe_lease_s=15))
    m.trip_and_wait()
    assert m.admit().is_probe
    m.advance(14.9)
    assert not m.admit().allowed
    m.advance(0.1)
    again = m.admit()
    assert again.allowed and again.is_probe


def test_probe_success_closes() -> None:
    m = Machine()
    m.trip_and_wait()
    assert m.admit().is_probe
    assert m.ok() is CLOSED
    assert m.admit().allowed and not m.admit().is_probe
    assert m.rec.consecutive_failures == 0 and m.rec.window == []


def test_probe_failure_reopens_with_growing_time_up_to_the_cap() -> None:
    m = Machine()
    m.trip_and_wait()
    expected = [10.0, 20.0, 40.0]  # exponential: base 5 s doubling
    for open_s in expected:
        assert m.admit().is_probe
        start = m.now
        assert m.fail(FailureKind.TIMEOUT) is OPEN
        assert m.rec.open_until == pytest.approx(start + open_s)
        m.wait_out()
    for _ in range(20):
        assert m.admit().is_probe
        start = m.now
        m.fail(FailureKind.TIMEOUT)
        m.wait_out()
    assert m.now - start == pytest.approx(60.0)  # capped at 60 s


def test_trip_count_survives_a_quick_relapse_and_resets_after_a_healthy_period() -> None:
    m = Machine(BreakerConfig(healthy_period_s=60))
    m.trip_and_wait()
    m.admit()
    m.ok()  # closed, trips still 1
    m.advance(10)
    m.trip_and_wait()  # relapse within the healthy period: second trip, 10 s
    assert m.rec.trips == 2
    m.admit()
    m.ok()
    m.advance(60)
    start = m.now
    m.fail()
    m.fail()
    m.fail()
    assert m.rec.trips == 1
    assert m.rec.open_until == pytest.approx(start + 5.0)


def test_default_full_jitter_draws_within_the_backoff_window() -> None:
    breaker = Breaker(BreakerConfig(min_open_s=1.0))
    seen = set()
    for _ in range(50):
        rec = BreakerRecord()
        for _ in range(3):
            breaker.record_failure(rec, fail(), T0)
        assert rec.open_until is not None
        open_s = rec.open_until - T0
        assert 1.0 <= open_s <= 5.0  # full jitter: anywhere in [floor, ceiling]
        seen.add(round(open_s, 6))
    assert len(seen) > 10  # it really is random


@pytest.mark.parametrize(
    ("draw", "schedule"),
    [
        (0.0, [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]),  # the ceilings: the documented schedule
        (0.5, [3.0, 5.5, 10.5, 20.5, 30.5, 30.5]),  # halfway between the floor and the ceiling
        (0.999999, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),  # never sooner than the 1 s floor
    ],
)
def test_recovery_probes_back_off_exponentially_with_full_jitter_up_to_the_cap(
    draw: float, schedule: list[float]
) -> None:
    breaker = Breaker(BreakerConfig(), jitter=lambda: draw)
    assert [breaker.open_time(trips) for trips in range(1, 7)] == pytest.approx(schedule, abs=1e-4)


def test_without_full_jitter_the_open_time_is_the_ceiling() -> None:
    breaker = Breaker(BreakerConfig(full_jitter=False), jitter=lambda: 0.7)
    assert [breaker.open_time(t) for t in (1, 2, 3, 9)] == [5.0, 10.0, 20.0, 60.0]


def test_late_ordinary_failure_while_open_does_not_extend_it() -> None:
    m = Machine()
    m.fail()
    m.fail()
    m.fail()
    until = m.rec.open_until
    m.advance(1)
    assert m.fail() is OPEN
    assert m.rec.open_until == until
    assert m.ok() is OPEN  # a late success does not close it either


# -- failure kinds with their own rules ----------------------------------------------------


def test_rate_limited_with_retry_after_opens_at_once_for_exactly_that_long() -> None:
    m = Machine(jitter=0.9)
    assert m.fail(FailureKind.RATE_LIMITED, retry_after_s=7.5) is OPEN
    assert m.rec.open_until == T0 + 7.5  # exact: no jitter, no backoff
    assert m.rec.trips == 0
    denied = m.admit()
    assert not denied.allowed and denied.until == T0 + 7.5
    assert denied.reason.startswith("rate_limited until 13:00:07Z")
    m.advance(7.499)
    assert not m.admit().allowed
    m.advance(0.001)
    assert m.admit().is_probe


def test_rate_limited_probe_reopens_for_exactly_retry_after() -> None:
    m = Machine()
    m.trip_and_wait()
    m.admit()
    m.fail(FailureKind.RATE_LIMITED, retry_after_s=2)
    assert m.rec.state is OPEN and m.rec.open_until == m.now + 2


def test_rate_limited_without_retry_after_trips_with_backoff() -> None:
    m = Machine()
    assert m.fail(FailureKind.RATE_LIMITED) is OPEN
    assert m.rec.open_until == pytest.approx(T0 + 5.0)
    assert m.rec.trips == 1


def test_longer_retry_after_while_open_extends_but_shorter_does_not_shorten() -> None:
    m = Machine()
    m.fail(FailureKind.RATE_LIMITED, retry_after_s=30)
    m.fail(FailureKind.RATE_LIMITED, retry_after_s=2)
    assert m.rec.open_until == T0 + 30
    m.fail(FailureKind.RATE_LIMITED, retry_after_s=45)
    assert m.rec.open_until == T0 + 45


def test_quota_exhausted_opens_until_the_reported_reset() -> None:
    m = Machine()
    reset = T0 + 11 * 3600
    assert m.fail(FailureKind.QUOTA_EXHAUSTED, reset_at=reset) is OPEN
    assert m.rec.open_until == reset
    m.advance(11 * 3600 - 1)
    assert not m.admit().allowed
    m.advance(1)
    assert m.admit().is_probe


def test_quota_exhausted_without_reset_uses_the_long_cooldown() -> None:
    m = Machine()
    m.fail(FailureKind.QUOTA_EXHAUSTED)
    assert m.rec.open_until == T0 + 3600
    m2 = Machine(BreakerConfig(quota_cooldown_s=600))
    m2.fail(FailureKind.QUOTA_EXHAUSTED, reset_at=T0 - 5)  # a reset in the past is ignored
    assert m2.rec.open_until == T0 + 600


def test_budget_exhausted_opens_until_the_end_of_the_budget_period() -> None:
    m = Machine()
    assert m.fail(FailureKind.BUDGET_EXHAUSTED) is OPEN
    assert m.rec.open_until == calendar.timegm((2026, 11, 26, 0, 0, 0))
    monthly = Machine(BreakerConfig(budget_period="month"))
    monthly.fail(FailureKind.BUDGET_EXHAUSTED)
    assert monthly.rec.open_until == calendar.timegm((2026, 12, 1, 0, 0, 0))
    given = Machine()
    given.fail(FailureKind.BUDGET_EXHAUSTED, reset_at=T0 + 90)
    assert given.rec.open_until == T0 + 90


def test_period_end_rolls_over_the_year() -> None:
    dec = float(calendar.timegm((2026, 12, 31, 23, 59, 59)))
    assert period_end("day", dec) == calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert period_end("month", dec) == calendar.timegm((2027, 1, 1, 0, 0, 0))


def test_key_rejected_stays_off_until_the_fingerprint_changes() -> None:
    m = Machine()
    old = key_fingerprint("sim-key-old")
    m.breaker.register(m.rec, old, m.now)
    assert m.fail(FailureKind.KEY_REJECTED, status=401) is BreakerState.KEY_REJECTED
    m.advance(7 * 86400)  # no clock ends it
    denied = m.admit()
    assert not denied.allowed and denied.state is BreakerState.KEY_REJECTED
    assert denied.until is None and "key" in denied.reason
    assert m.breaker.register(m.rec, old, m.now) is BreakerState.KEY_REJECTED  # a restart
    assert not m.admit().allowed
    assert m.ok() is BreakerState.KEY_REJECTED  # a late success does not lift it
    new = key_fingerprint("sim-key-new")
    assert m.breaker.register(m.rec, new, m.now) is CLOSED
    assert m.admit().allowed


def test_key_rejected_is_remembered_under_the_new_key_too() -> None:
    m = Machine()
    m.breaker.register(m.rec, "aaa", m.now)
    m.fail(FailureKind.KEY_REJECTED)
    m.breaker.register(m.rec, "bbb", m.now)
    m.fail(FailureKind.KEY_REJECTED)  # the new key is bad as well
    assert m.breaker.register(m.rec, "bbb", m.now) is BreakerState.KEY_REJECTED
    assert m.breaker.register(m.rec, "aaa", m.now) is CLOSED  # back to the first: try it


def test_key_fingerprint_hides_the_key_and_tells_keys_apart() -> None:
    key = "sim-key-0123456789abcdef"
    fp = key_fingerprint(key)
    assert key not in fp and "0123456789" not in fp
    assert fp == key_fingerprint(key)
    assert fp != key_fingerprint(key + "x")
    assert key_fingerprint(None) == key_fingerprint("") == "none"


def test_request_fault_never_counts() -> None:
    m = Machine()
    for _ in range(20):
        assert m.fail(FailureKind.REQUEST_FAULT) is CLOSED
    assert m.rec.consecutive_failures == 0 and m.rec.window == []


def test_request_fault_on_the_probe_frees_the_lease() -> None:
    m = Machine()
    m.trip_and_wait()
    assert m.admit().is_probe
    assert m.fail(FailureKind.REQUEST_FAULT) is HALF_OPEN
    assert m.admit().is_probe  # the next probe may go at once


@pytest.mark.parametrize(
    "kind",
    [
        FailureKind.SERVER_ERROR,
        FailureKind.CONNECTION_ERROR,
        FailureKind.TIMEOUT,
        FailureKind.STALL,
        FailureKind.IN_BAND_ERROR,
        FailureKind.EMPTY_RESULT,
        FailureKind.TRUNCATED,
        FailureKind.UNKNOWN,
    ],
)
def test_every_health_failure_kind_counts_toward_tripping(kind: FailureKind) -> None:
    m = Machine()
    m.fail(kind)
    m.fail(kind)
    assert m.fail(kind) is OPEN
    assert m.rec.opened_by is kind


# -- operator overrides --------------------------------------------------------------------


@pytest.mark.parametrize("override", [BreakerState.FORCED_OPEN, BreakerState.DISABLED])
def test_overrides_refuse_everything_and_clearing_reveals_the_real_state(
    override: BreakerState,
) -> None:
    m = Machine()
    assert m.breaker.set_override(m.rec, override) is override
    denied = m.admit()
    assert not denied.allowed and denied.state is override and "operator" in denied.reason
    assert m.fail() is override
    m.fail()
    m.fail()  # the real breaker trips underneath
    assert m.breaker.set_override(m.rec, None) is OPEN
    assert not m.admit().allowed


def test_an_override_must_be_an_override_state() -> None:
    with pytest.raises(ValueError, match="forced_open, disabled or None"):
        Breaker().set_override(BreakerRecord(), BreakerState.OPEN)


def test_view_state_shows_an_expired_open_as_half_open() -> None:
    m = Machine()
    m.trip_and_wait()
    assert m.rec.state is OPEN
    assert m.breaker.view_state(m.rec, m.now) is HALF_OPEN
    assert m.breaker.view_state(m.rec, m.now - 1) is OPEN


# -- serialisation and settings ------------------------------------------------------------


def test_state_round_trips_through_json_and_keeps_behaving_the_same() -> None:
    m = Machine()
    m.breaker.register(m.rec, "abc123", m.now)
    m.ok()
    m.fail()
    m.trip_and_wait()
    m.admit()
    text = json.dumps(m.rec.to_dict())
    assert len(text) < 600
    copy = BreakerRecord.from_dict(json.loads(text))
    assert copy == m.rec
    twin = Machine()
    twin.now, twin.rec = m.now, copy
    assert twin.admit() == m.admit()
    assert twin.fail() == m.fail()
    assert twin.rec == m.rec


def test_corrupt_state_is_refused_with_a_way_out() -> None:
    with pytest.raises(ValueError, match="resets such a record"):
        BreakerRecord.from_dict({"state": "sideways"})
    with pytest.raises(ValueError, match="resets such a record"):
        BreakerRecord.from_dict({"state": "forced_open"})


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="failure_rate_threshold"):
        BreakerConfig(failure_rate_threshold=1.5)
    with pytest.raises(ValueError, match="max_open_s must be >= base_open_s"):
        BreakerConfig(base_open_s=10, max_open_s=5)
    with pytest.raises(ValueError, match="budget_period"):
        BreakerConfig(budget_period="week")  # type: ignore[arg-type]
