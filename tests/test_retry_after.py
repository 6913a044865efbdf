"""Provider-given wait and reset times are validated and clamped wherever they come from.

A ``Retry-After: 999999999`` once kept a provider off for 31 years, and ``inf`` forever (with
``status`` crashing on the date); every value now goes through :mod:`plugins.resilience.retry_after`.
"""

from __future__ import annotations

import math

import pytest

from agent.crm.rate_limit import retry_after_from
from plugins.resilience.breaker import Breaker, BreakerConfig, BreakerRecord
from plugins.resilience.retry_after import (
    MAX_RESET_AHEAD_S,
    MAX_RETRY_AFTER_S,
    bounded_reset_at,
    parse_retry_after,
    retry_after_from_body,
    retry_after_from_headers,
)
from plugins.resilience.types import Failure, FailureKind

NOW = 1_790_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "20"}, 20.0),
        ({"Retry-After": "999999999"}, MAX_RETRY_AFTER_S),
        ({"Retry-After": "inf"}, None),  # not a number of seconds: an ordinary trip
        ({"Retry-After": "1e300"}, MAX_RETRY_AFTER_S),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, MAX_RETRY_AFTER_S),
        ({"Retry-After": "Mon, 32 Foo 2026 99:99:99 GMT"}, None),
        ({"retry-after-ms": "inf"}, None),
        ({"retry-after-ms": "nan", "Retry-After": "7"}, 7.0),
        ({"x-ratelimit-reset-requests": "99999h"}, MAX_RETRY_AFTER_S),
        ({"x-ratelimit-reset": "inf"}, None),
        ({"x-ratelimit-reset": str(NOW + 30)}, 30.0),
        ({"x-ratelimit-reset": "1e300"}, MAX_RETRY_AFTER_S),
    ],
)
def test_header_waits_are_finite_and_capped(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after_from_headers(headers, now=NOW) == expected


def test_body_waits_are_capped() -> None:
    assert retry_after_from_body('"retryDelay": "99999999999s"') == MAX_RETRY_AFTER_S
    assert retry_after_from_body("Please try again in 20ms.") == pytest.approx(0.02)


def test_reset_dates_must_be_sane() -> None:
    assert bounded_reset_at(math.inf, now=NOW) is None
    assert bounded_reset_at(math.nan, now=NOW) is None
    assert bounded_reset_at(NOW - 1, now=NOW) is None
    assert bounded_reset_at(1e300, now=NOW) == NOW + MAX_RESET_AHEAD_S
    assert bounded_reset_at(NOW + 600, now=NOW) == NOW + 600


@pytest.mark.parametrize("wait", [math.inf, 1e300, 999999999.0, math.nan, -1.0])
def test_the_breaker_never_opens_past_the_cap(wait: float) -> None:
    """However a Failure was built (a plugin, a hand-written guard), the breaker holds the bound."""
    breaker = Breaker(BreakerConfig())
    for kind in (FailureKind.RATE_LIMITED, FailureKind.QUOTA_EXHAUSTED):
        rec = BreakerRecord()
        breaker.record_failure(rec, Failure(kind, "429", 429, retry_after_s=wait), NOW)
        assert rec.open_until is not None and math.isfinite(rec.open_until)
        assert rec.open_until <= NOW + max(MAX_RETRY_AFTER_S, BreakerConfig().quota_cooldown_s)
    rec = BreakerRecord()
    failure = Failure(FailureKind.QUOTA_EXHAUSTED, "402", 402, reset_at=wait * 1e6)
    breaker.record_failure(rec, failure, NOW)
    assert rec.open_until is not None and rec.open_until <= NOW + MAX_RESET_AHEAD_S


def test_a_stored_infinite_time_is_corruption_not_forever() -> None:
    with pytest.raises(ValueError, match="not valid"):
        BreakerRecord.from_dict({"state": "open", "open_until": math.inf})


def test_ghl_uses_the_same_reader() -> None:
    assert retry_after_from({"Retry-After": "1e300"}, default_s=10.0) == MAX_RETRY_AFTER_S
    assert retry_after_from({"Retry-After": "inf"}, default_s=10.0) == 10.0
    assert retry_after_from({"Retry-After": "nan"}, default_s=10.0) == 10.0
    assert parse_retry_after("2.5") == 2.5
